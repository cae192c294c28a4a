"""Calibration of new items' scores: content-only scores put on the trained items' scale."""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.models.new_items import NewItemCalibration


def trained_catalogue(num_items=400, dim=8, content_scale=0.1, seed=0):
    """Full vectors, and content-only vectors that point the same way at a tenth of the length
    plus noise: raw content-only scores are far below full ones for every user."""
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(num_items, dim)).astype(np.float32)
    content = content_scale * full + 0.01 * rng.normal(size=full.shape).astype(np.float32)
    users = rng.normal(size=(16, dim)).astype(np.float32)
    return full, content, users


def test_trained_items_seen_through_content_get_the_full_scores_mean_and_spread():
    full, content, users = trained_catalogue()
    calibrated = NewItemCalibration.fit(full, content).apply(users, users @ content.T)
    full_scores = users @ full.T
    np.testing.assert_allclose(calibrated.mean(axis=1), full_scores.mean(axis=1), atol=1e-3)
    np.testing.assert_allclose(calibrated.std(axis=1), full_scores.std(axis=1), rtol=1e-3)


def test_a_new_twin_of_a_trained_item_scores_like_it_where_raw_scores_bury_it():
    full, content, users = trained_catalogue()
    calibration = NewItemCalibration.fit(full, content)
    twin = content[7]  # a new item whose content is trained item 7's
    buried = 0
    for user in users:
        trained_scores = full @ user
        calibrated = calibration.apply(user, np.array([twin @ user]))[0]
        assert abs(calibrated - trained_scores[7]) <= 0.3 * trained_scores.std()
        if trained_scores[7] > np.quantile(trained_scores, 0.9):  # a top-10% item for this user
            buried += (trained_scores > twin @ user).mean() > 0.2  # raw: a tenth of the score
    assert buried >= 1


def test_calibration_keeps_new_items_order_and_boost_moves_them_by_standard_deviations():
    full, content, users = trained_catalogue()
    calibration = NewItemCalibration.fit(full, content)
    raw = users @ content[:50].T
    calibrated = calibration.apply(users, raw)
    assert (np.argsort(calibrated, axis=1) == np.argsort(raw, axis=1)).all()
    boosted = calibration.with_boost(0.5).apply(users, raw)
    shift = 0.5 * (users @ full.T).std(axis=1)
    np.testing.assert_allclose(boosted - calibrated, np.broadcast_to(shift[:, None], raw.shape), rtol=1e-3)


def test_content_that_tells_no_items_apart_gives_new_items_the_mean_trained_score():
    full, _, users = trained_catalogue()
    same_content = np.ones_like(full)
    calibrated = NewItemCalibration.fit(full, same_content).apply(users, users @ same_content[:3].T)
    np.testing.assert_allclose(calibrated, np.repeat((users @ full.T).mean(axis=1)[:, None], 3, axis=1), atol=1e-4)


def test_fit_names_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        NewItemCalibration.fit(np.zeros((5, 4)), np.zeros((5, 3)))


# -- a trained model ----------------------------------------------------------------------------
SYNTHETIC = dict(num_users=200, num_items=120, num_clusters=4, mean_events_per_user=20, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on synthetic clusters whose item categories name the cluster."""
    from rayrec.data.synthetic import SyntheticConfig, generate, synthetic_truth
    from rayrec.models.trained import TrainedModel
    from rayrec.training.config import TrainConfig
    from rayrec.training.local import train_in_process

    config = SyntheticConfig(**SYNTHETIC)
    dataset = generate(config)
    train = TrainConfig(epochs=10, eval_every=5, learning_rate=5e-3,
                        model={"dim": 16, "max_len": 20, "item_encoder_options": {"use_categories": True}})
    model_dir = train_in_process(dataset, tmp_path_factory.mktemp("model"), train, log=lambda line: None)
    return TrainedModel.load(model_dir), dataset, synthetic_truth(config)


def test_trained_items_from_content_are_what_encode_items_gives_them(trained):
    model, dataset, _ = trained
    records = {r["item_id"]: r for r in dataset.items.records()}
    from_content = model.trained_items_from_content()
    np.testing.assert_allclose(from_content, model.encode_items([records[i] for i in model.item_ids]), atol=1e-6)


def test_new_items_reach_their_cluster_s_users_without_taking_over(trained):
    model, dataset, truth = trained
    cluster_of = dict(zip(truth.item_ids, truth.item_cluster))
    # Two new items per cluster, with the content of a trained item of that cluster.
    donors = [next(r for r in dataset.items.records() if cluster_of[r["item_id"]] == c and r["item_id"] != seen)
              for c in range(4) for seen in ("", "-")]
    new_records = [{**r, "item_id": f"new-{n}"} for n, r in enumerate(donors)]
    new_cluster = np.array([cluster_of[r["item_id"]] for r in donors])
    new_vectors = model.encode_items(new_records)
    calibration = model.new_item_calibration()
    users = list(range(len(model.user_vocab)))
    user_vectors, _ = model.encode_histories([model.training_history_indices(u) for u in users])
    scores = np.hstack([user_vectors @ model.item_embeddings.T,
                        calibration.apply(user_vectors, user_vectors @ new_vectors.T)])
    top = np.argsort(-scores, axis=1)[:, :10]
    is_new = top >= len(model.item_ids)
    user_cluster = np.array([truth.user_cluster[truth.user_ids.index(model.user_vocab.ids[u])] for u in users])
    shown = [new_cluster[row[new] - len(model.item_ids)] for row, new in zip(top, is_new)]
    right_cluster = np.mean([np.mean(s == c) for s, c in zip(shown, user_cluster) if len(s)])
    share = is_new.mean()
    assert right_cluster >= 0.9  # new items go to the users of their cluster
    # 8 of 128 items are new (6%): they get slots (4% measured; raw scores gave them none),
    # and do not crowd the trained items out.
    assert 0.02 <= share <= 0.4, share
