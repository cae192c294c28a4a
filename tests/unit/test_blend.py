"""Blending a sequential and an order-free model: the weight chosen on validation shortlists,
and the blended model directory serving loads like any other."""

import numpy as np
import pytest

from rayrec.training.shortlists import Shortlists, best_blend, shortlist_ndcg, write_shortlists


def _shortlists(scores: np.ndarray, targets: np.ndarray, histories, tmp_path, name: str) -> Shortlists:
    directory = tmp_path / name
    directory.mkdir()
    write_shortlists(directory, lambda rows, _: scores[rows], histories, targets)
    return Shortlists.load(directory)


def test_a_blend_of_two_half_informed_models_ranks_better_than_either(tmp_path):
    """Each model knows half of what points at a user's target; together they know it all."""
    rng = np.random.default_rng(0)
    users, items = 400, 300
    targets = rng.integers(0, items, users)
    histories = [rng.choice(np.setdiff1d(np.arange(items), [t]), 5, replace=False) for t in targets]
    signal = np.zeros((users, items), np.float32)
    signal[np.arange(users), targets] = 1.0
    first = rng.normal(size=(users, items)).astype(np.float32) + 1.5 * signal
    second = 10 * (rng.normal(size=(users, items)).astype(np.float32) + 1.5 * signal)  # another scale
    a = _shortlists(first, targets, histories, tmp_path, "a")
    b = _shortlists(second, targets, histories, tmp_path, "b")
    assert a.items.shape == (users, 200)
    assert not any(set(a.items[u]) & set(histories[u]) for u in range(users))  # the history is masked
    blend = best_blend(a, b)
    alone = max(shortlist_ndcg(a), shortlist_ndcg(b))
    assert blend.val_ndcg > 1.3 * alone, (blend, alone)
    # The weight undoes the second model's 10x larger scale: about 1/10 of an equal say.
    assert 0.02 < blend.weight < 0.5, blend


def test_a_useless_second_model_gets_the_smallest_weight(tmp_path):
    rng = np.random.default_rng(1)
    users, items = 300, 250
    targets = rng.integers(0, items, users)
    histories = [np.zeros(0, np.int64)] * users
    informed = rng.normal(size=(users, items)).astype(np.float32)
    informed[np.arange(users), targets] += 2.5
    noise = rng.normal(size=(users, items)).astype(np.float32)
    a = _shortlists(informed, targets, histories, tmp_path, "a")
    b = _shortlists(noise, targets, histories, tmp_path, "b")
    blend = best_blend(a, b)
    assert blend.val_ndcg <= shortlist_ndcg(a) + 1e-9
    assert blend.val_ndcg > 0.9 * shortlist_ndcg(a)


@pytest.fixture(scope="module")
def blended_model_dir(tmp_path_factory):
    """A sequential and an EASE model trained on one synthetic dataset, blended by selection's
    own installer."""
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.training import selection
    from rayrec.training.config import TrainConfig
    from rayrec.training.ease import train_ease
    from rayrec.training.local import train_prepared_in_process
    from rayrec.training.prepare import prepare

    root = tmp_path_factory.mktemp("blend")
    data = prepare(generate(SyntheticConfig(num_users=80, num_items=60, num_clusters=3, mean_events_per_user=12)))
    work = root / "work"
    train_prepared_in_process(data, work / "sasrec", TrainConfig(epochs=2, model={"dim": 8, "max_len": 10}),
                              log=lambda line: None)
    train_ease(data, work / "ease", log=lambda line: None)
    row = {"candidate": "sasrec+ease", "val_ndcg@10": 0.5, "val_hr@10": 0.6,
           "details": {"parts": ["sasrec", "ease"], "weight": 3.0}}
    out = root / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an older model")
    selection._clear_older_model(out)  # as select_and_train does before installing the winner
    selection._install_blend(work, row, data, out)
    return out


def test_the_blend_scores_are_the_parts_scores_weighted(blended_model_dir):
    from rayrec.models.blend import BlendModel
    from rayrec.models.servable import load_model_dir

    model = load_model_dir(blended_model_dir)
    assert isinstance(model, BlendModel)
    assert not (blended_model_dir / "stale.txt").exists()
    sequential = load_model_dir(blended_model_dir / "parts" / "sasrec")
    ease = load_model_dir(blended_model_dir / "parts" / "ease")
    histories = [model.training_history_indices(u) for u in range(5)]
    blended = model.user_vectors(histories) @ model.item_embeddings.T
    parts = (sequential.user_vectors(histories) @ sequential.item_embeddings.T
             + 3.0 * ease.user_vectors(histories) @ ease.item_embeddings.T)
    np.testing.assert_allclose(blended, parts, rtol=1e-4, atol=1e-4)
    vectors, attributions = model.encode_histories(histories)
    np.testing.assert_allclose(vectors, model.user_vectors(histories), rtol=1e-5, atol=1e-5)
    assert [len(a) for a in attributions] == [len(h) for h in histories]
    top, _ = model.recommend_indices([0, 1], 5)
    assert top.shape == (2, 5) and not set(top[0]) & set(model.training_history_indices(0))


def test_a_new_item_gets_each_parts_vector_weighted(blended_model_dir):
    from rayrec.models.servable import load_model_dir

    model = load_model_dir(blended_model_dir)
    ease = load_model_dir(blended_model_dir / "parts" / "ease")
    record = {"item_id": "new", "categories": ["cluster-0"]}
    vector = model.encode_items([record])
    assert vector.shape == (1, model.item_embeddings.shape[1])
    width = model.parts[0][0].item_embeddings.shape[1]
    np.testing.assert_allclose(vector[0, width:], 3.0 * ease.encode_items([record])[0], rtol=1e-5)
