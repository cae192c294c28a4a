"""EASE as a servable model kind, on synthetic data whose per-user order is shuffled (only
which items a user has carries signal): the same scores as the EASE baseline, feedback that
moves the next answer, explanations, new items, the model directory, ``rayrec recommend``,
training with a validation-chosen l2, and its place among ``rayrec train``'s candidates."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from rayrec.errors import ModelError
from rayrec.evaluation.baselines import EASEBaseline, fit_ease_tuned
from rayrec.models.ease_model import EASE_MAX_ITEMS, EASEModel
from rayrec.models.servable import load_model_dir
from rayrec.schema import Vocabulary
from rayrec.training.config import TrainConfig
from rayrec.training.ease import train_ease
from rayrec.training.export_ease import export_ease_model_dir
from rayrec.training.selection import (ALS_BUDGET_SHARE, Candidate, _deadlines, candidates_for,
                                      text_extractor_name)
from rayrec.training.prepare import validation_split

L2 = 50.0


@pytest.fixture(scope="module")
def baseline(shuffled):
    data, _ = shuffled
    return EASEBaseline(l2=L2).fit([s - 1 for s in data.sequences], data.num_items)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shuffled, baseline):
    data, _ = shuffled
    return export_ease_model_dir(data, L2, baseline.item_weights(), tmp_path_factory.mktemp("ease") / "model",
                                 extra_metrics={"best_val_ndcg@10": 0.5})


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model_dir(model_dir)


def in_cluster(items, clusters, cluster) -> float:
    return float(np.mean(clusters[np.asarray(items)] == cluster))


def top_unseen(model, history, k=10):
    scores = model.user_vectors([history])[0] @ model.item_embeddings.T
    scores[np.asarray(history, dtype=np.int64)] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def test_scores_are_the_ease_baselines(model, shuffled, baseline):
    data, _ = shuffled
    rng = np.random.default_rng(1)
    histories = [data.sequences[u] - 1 for u in range(20)] + [rng.choice(data.num_items, 7), []]
    vectors, _ = model.encode_histories(histories)
    assert vectors.shape == (len(histories), data.num_items) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors @ model.item_embeddings.T, baseline.score_histories(histories), atol=1e-4)
    np.testing.assert_array_equal(model.user_vectors(histories), vectors)
    # batch top-K for training users: the baseline's best unseen items
    items, scores = model.recommend_indices(np.arange(20), 10)
    expected = baseline.score(np.arange(20))
    for user in range(20):
        expected[user, data.sequences[user] - 1] = -np.inf
        np.testing.assert_allclose(scores[user], np.sort(expected[user])[::-1][:10], atol=1e-4)
        assert not set(items[user]) & set(data.sequences[user] - 1)


def test_feedback_changes_the_next_answer_and_order_and_repeats_do_not(model, shuffled):
    _, clusters = shuffled
    home = np.flatnonzero(clusters == 0)[:6]
    assert in_cluster(top_unseen(model, home), clusters, 0) >= 0.9
    clicked = np.flatnonzero(clusters == 3)[:6]
    longer = np.concatenate([home, clicked])  # the same user after six clicks in cluster 3
    after = top_unseen(model, longer)
    assert in_cluster(after, clusters, 3) >= 0.4 and not set(after) & set(longer)
    np.testing.assert_array_equal(model.user_vectors([longer[::-1]]), model.user_vectors([longer]))
    np.testing.assert_array_equal(model.user_vectors([np.concatenate([longer, home])]), model.user_vectors([longer]))
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        model.user_vectors([[300]])


def test_attributions_credit_the_history_items_behind_the_top_items(model, shuffled):
    _, clusters = shuffled
    home = np.flatnonzero(clusters == 2)[:4]
    stray = np.flatnonzero(clusters == 4)[:1]
    history = [home[0], stray[0], home[1], home[2], home[0], home[3]]  # home[0] twice
    _, (weights, empty) = model.encode_histories([history, []])
    assert weights.shape == (6,) and weights.sum() == pytest.approx(1.0, abs=1e-5) and (weights >= 0).all()
    assert weights[1] < min(weights[[2, 3, 5]])  # the stray item explains little of a cluster-2 top 10
    assert weights[0] == pytest.approx(weights[4])  # a repeated item's part is split over its positions
    assert empty.shape == (0,)


def test_new_items_score_like_their_categorys_items(model, shuffled):
    _, clusters = shuffled
    category_of = {}
    for index, record in enumerate(model.items):
        for category in record["categories"]:
            category_of.setdefault(category, []).append(index)
    category, members = max(category_of.items(), key=lambda pair: len(pair[1]))
    cluster = np.bincount(clusters[members]).argmax()
    vectors = model.encode_items([{"item_id": "new", "categories": [category]}, {"item_id": "plain"}])
    assert vectors.shape == (2, model.item_embeddings.shape[1]) and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], model.item_embeddings[members].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(vectors[1], model.item_embeddings.mean(axis=0), atol=1e-6)
    fan = model.user_vectors([np.flatnonzero(clusters == cluster)[:5]])[0]
    assert vectors[0] @ fan > vectors[1] @ fan  # a fan of the category sees the newcomer higher
    assert model.new_item_calibration(0.5) is None


def test_model_directory_round_trip(model_dir, model, shuffled):
    data, _ = shuffled
    config = json.loads((model_dir / "config.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert config["model_kind"] == "ease" and config["ease_l2"] == L2 and config["dim"] == data.num_items
    assert metrics["model_kind"] == "ease" and metrics["best_val_ndcg@10"] == 0.5
    assert isinstance(model, EASEModel)
    assert model.version == config["model_version"] and model.l2 == L2
    assert model.item_ids == data.item_vocab.ids and model.item_popularity.sum() == data.num_interactions
    assert model.max_history >= max(len(s) for s in data.sequences)
    np.testing.assert_array_equal(model.weights, model.item_embeddings.T)
    np.testing.assert_array_equal(model.training_history_indices(7), data.sequences[7] - 1)


def test_a_damaged_directory_names_the_problem(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = np.load(model_dir / "item_embeddings.npy")
    config = json.loads((model_dir / "config.json").read_text())
    np.save(broken / "item_embeddings.npy", np.eye(len(weights), dtype=np.float32))
    with pytest.raises(ModelError, match="non-zero diagonal"):
        load_model_dir(broken)
    np.save(broken / "item_embeddings.npy", weights[:, :10])
    (broken / "config.json").write_text(json.dumps({**config, "dim": 10}))
    with pytest.raises(ModelError, match=r"category_factors.npy has shape \(66, 300\), expected \(66, 10\)"):
        load_model_dir(broken)
    (broken / "category_factors.npy").unlink()
    with pytest.raises(ModelError, match=r"are square: \(300, 300\)"):
        load_model_dir(broken)
    (broken / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "ease_l2"}))
    np.save(broken / "item_embeddings.npy", weights)
    with pytest.raises(ModelError, match="no usable ease_l2"):
        load_model_dir(broken)


def test_rayrec_recommend_writes_top_k_per_user(model_dir, check_rayrec_recommend):
    check_rayrec_recommend(model_dir)


# -- training --------------------------------------------------------------------------------
def test_train_ease_chooses_l2_on_validation_and_refits_on_everything(shuffled, tmp_path):
    data, _ = shuffled
    lines = []
    details = train_ease(data, tmp_path / "model", threads=1, log=lines.append)
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    train1, targets1 = validation_split(data.sequences)
    reference, l2 = fit_ease_tuned([s - 1 for s in train1], targets1 - 1, data.num_items)
    assert details == {"l2": l2, "settings_tried": len(reference.validation_ndcg)} and len(lines) == details["settings_tried"]
    assert metrics["best_val_ndcg@10"] == pytest.approx(reference.validation_ndcg[l2])
    assert metrics["best_val_hr@10"] == pytest.approx(reference.validation_metrics[l2]["HR@10"])
    assert metrics["ease_l2"] == l2 and metrics["best_val_ndcg@10"] > 0.3
    trained = load_model_dir(tmp_path / "model")
    final = EASEBaseline(l2=l2).fit([s - 1 for s in data.sequences], data.num_items)  # held-out items included
    np.testing.assert_allclose(trained.weights, final.item_weights(), atol=1e-5)


def test_train_ease_stops_searching_at_its_deadline_and_refuses_big_catalogues(shuffled, tmp_path):
    data, _ = shuffled
    details = train_ease(data, tmp_path / "model", deadline=time.time() - 1, log=lambda line: None)
    assert details["settings_tried"] == 1 and details["l2"] == 500.0  # the most likely value comes first
    big = dataclasses.replace(data, item_vocab=Vocabulary(f"i{n}" for n in range(EASE_MAX_ITEMS + 1)))
    with pytest.raises(ValueError, match="up to 10,000 items"):
        train_ease(big, tmp_path / "big")


def test_ease_is_a_candidate_right_after_als_up_to_the_size_cap(shuffled):
    data, _ = shuffled
    names = [c.name for c in candidates_for(data, TrainConfig())]
    # The one sequential candidate: the content-aware one where the items have text and a
    # plugin encodes it (the synthetic items have titles), else plain sasrec.
    sequential = "sasrec_text" if text_extractor_name() is not None else "sasrec"
    assert names[:3] == ["als", "ease", sequential]
    big = dataclasses.replace(data, item_vocab=Vocabulary(f"i{n}" for n in range(EASE_MAX_ITEMS + 1)))
    assert "ease" not in [c.name for c in candidates_for(big, TrainConfig())]


def test_above_the_full_softmax_size_the_id_only_model_runs_beside_the_text_one(shuffled):
    """Where the content-aware model would train with the sampled softmax it is slower and the
    text encoding takes its share, so the search also tries the id-only sequential model."""
    data, _ = shuffled
    config = TrainConfig()
    big = dataclasses.replace(data, item_vocab=Vocabulary(
        f"i{n}" for n in range(config.model.full_softmax_max_items + 1)))
    names = [c.name for c in candidates_for(big, config)]
    assert names == (["als", "sasrec", "sasrec_text"] if text_extractor_name() is not None else ["als", "sasrec"])
    small = [c.name for c in candidates_for(data, config)]
    assert ("sasrec" in small) == (text_extractor_name() is None)


def test_order_free_candidates_share_the_small_budget_share():
    als, ease = Candidate("als", "als", "", {}), Candidate("ease", "ease", "", {})
    sasrec = Candidate("sasrec", "two_tower", "", {})
    deadlines = _deadlines([als, ease, sasrec], 0.0, 1000.0, parallel=False)
    np.testing.assert_allclose(deadlines, [500 * ALS_BUDGET_SHARE, 1000 * ALS_BUDGET_SHARE, 1000])
    np.testing.assert_allclose(_deadlines([als, ease], 0.0, 1000.0, parallel=False), [500, 1000])
    assert _deadlines([als, ease, sasrec], 0.0, 1000.0, parallel=True) == [1000.0] * 3
