"""Implicit ALS on synthetic data whose per-user order is shuffled: only which items a user
has carries signal. Fitting, fold-in, explanations, the model directory and ``rayrec recommend``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayrec.data.synthetic import synthetic_truth
from rayrec.errors import ModelError
from rayrec.evaluation.baselines import PopularityBaseline
from rayrec.evaluation.protocol import evaluate_ranking
from rayrec.models.als import ALSParams, fit_als, fit_als_factors, fold_in, fold_in_with_contributions
from rayrec.models.als_model import ALSModel
from rayrec.models.servable import load_model_dir
from rayrec.training.als import als_validation_metrics
from rayrec.training.export_als import export_als_model_dir

PARAMS = ALSParams(factors=16, iterations=10)


@pytest.fixture(scope="module")
def split(shuffled):
    """0-based training sequences without each user's last (random) item, and that item."""
    data, _ = shuffled
    train = [s[:-1] - 1 for s in data.sequences]
    targets = np.array([s[-1] - 1 for s in data.sequences])
    return train, targets


@pytest.fixture(scope="module")
def fitted(shuffled, split):
    data, _ = shuffled
    return fit_als_factors(split[0], data.num_items, PARAMS, seed=0, threads=1)


def in_cluster(items, clusters, cluster) -> float:
    return float(np.mean(clusters[np.asarray(items)] == cluster))


def test_als_beats_popularity_by_far_when_order_carries_no_signal(shuffled, split, fitted):
    data, _ = shuffled
    train, targets = split
    als = als_validation_metrics(fitted.item_factors, train, targets, PARAMS)
    popularity = PopularityBaseline().fit(train, data.num_items)
    baseline = evaluate_ranking(lambda users: popularity.score_histories([train[u] for u in users]),
                                train, targets, data.num_items, ks=(10,))
    assert als["users"] == len(train)
    assert als["NDCG@10"] > 0.25
    assert als["NDCG@10"] > 4 * baseline["NDCG@10"]


def test_fit_is_deterministic_in_its_seed_and_returns_item_factors(shuffled, split, fitted):
    data, _ = shuffled
    again = fit_als(split[0], data.num_items, PARAMS, seed=0, threads=1)
    assert again.shape == (data.num_items, PARAMS.factors) and again.dtype == np.float32
    np.testing.assert_allclose(again, fitted.item_factors, rtol=1e-4, atol=1e-5)
    other = fit_als(split[0], data.num_items, PARAMS.model_copy(update={"iterations": 1}), seed=1)
    assert not np.allclose(other, fitted.item_factors)


def test_fold_in_is_the_closed_form_least_squares_solution(split, fitted):
    """x_u = (Y^T C_u Y + lambda I)^-1 Y^T C_u p_u with dense C_u over all items (Hu et al. eq. 4)."""
    items = fitted.item_factors.astype(np.float64)
    history = np.concatenate([split[0][5], split[0][5][:3]])  # three items twice
    counts = np.bincount(history, minlength=len(items))
    confidence = 1 + PARAMS.alpha * counts
    preference = (counts > 0).astype(np.float64)
    lhs = items.T @ (confidence[:, None] * items) + PARAMS.regularization * np.eye(PARAMS.factors)
    expected = np.linalg.solve(lhs, items.T @ (confidence * preference))
    np.testing.assert_allclose(fold_in(fitted.item_factors, [history], PARAMS)[0], expected, rtol=1e-3, atol=1e-5)


def test_fold_in_of_a_training_history_gives_the_fitted_users_recommendations(split, fitted):
    train, _ = split
    users = np.arange(100)
    folded = fold_in(fitted.item_factors, [train[u] for u in users], PARAMS)
    assert folded.shape == (100, PARAMS.factors) and folded.dtype == np.float32
    ours = folded @ fitted.item_factors.T
    theirs = fitted.user_factors[users] @ fitted.item_factors.T
    overlaps = []
    for row, user in enumerate(users):
        ours[row, train[user]] = theirs[row, train[user]] = -np.inf
        overlaps.append(len(set(np.argsort(-ours[row])[:10]) & set(np.argsort(-theirs[row])[:10])) / 10)
        seen = np.isfinite(ours[row])
        assert np.corrcoef(ours[row, seen], theirs[row, seen])[0, 1] > 0.99
    assert np.mean(overlaps) >= 0.9


def test_a_history_from_one_cluster_recommends_that_cluster(shuffled, fitted, order_free_data):
    data, clusters = shuffled
    for cluster in range(order_free_data.num_clusters):
        history = np.flatnonzero(clusters == cluster)[:5]
        vector = fold_in(fitted.item_factors, [history], PARAMS)[0]
        scores = fitted.item_factors @ vector
        scores[history] = -np.inf
        assert in_cluster(np.argsort(-scores)[:10], clusters, cluster) >= 0.9


def test_fold_in_ignores_order_and_counts_repeats(shuffled, fitted):
    _, clusters = shuffled
    home = np.flatnonzero(clusters == 0)[:6]
    away = np.flatnonzero(clusters == 1)[:1]
    history = np.concatenate([home, away])
    vectors = fold_in(fitted.item_factors, [history, history[::-1], np.concatenate([history, np.repeat(away, 8)]), []],
                      PARAMS)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
    away_share = [in_cluster(np.argsort(-(fitted.item_factors @ v))[:20], clusters, 1) for v in vectors[:3]]
    assert away_share[2] > away_share[0]  # the repeated item weighs more
    assert not vectors[3].any()  # an empty history: the zero vector
    with pytest.raises(ValueError, match="outside the 300 items"):
        fold_in(fitted.item_factors, [[300]], PARAMS)


def test_contributions_credit_the_history_items_behind_the_top_items(shuffled, fitted):
    _, clusters = shuffled
    home = np.flatnonzero(clusters == 2)[:4]
    stray = np.flatnonzero(clusters == 4)[:1]
    history = [home[0], stray[0], home[1], home[2], home[0], home[3]]  # home[0] twice
    _, (weights,) = fold_in_with_contributions(fitted.item_factors, [history], PARAMS, top_k=10)
    assert weights.shape == (6,) and weights.sum() == pytest.approx(1.0, abs=1e-5) and (weights >= 0).all()
    assert weights[1] < min(weights[[2, 3, 5]])  # the stray item explains little of a cluster-2 top 10
    assert weights[0] == pytest.approx(weights[4])  # a repeated item's part is split over its positions


# -- the model directory ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shuffled):
    data, _ = shuffled
    factors = fit_als([s - 1 for s in data.sequences], data.num_items, PARAMS, seed=0, threads=1)
    return export_als_model_dir(data, PARAMS, factors, tmp_path_factory.mktemp("als") / "model",
                                extra_metrics={"best_val_ndcg@10": 0.5})


def test_model_directory_round_trip(model_dir, shuffled):
    data, clusters = shuffled
    config = json.loads((model_dir / "config.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert config["model_kind"] == "als" and config["als_params"] == PARAMS.model_dump()
    assert metrics["model_kind"] == "als" and metrics["best_val_ndcg@10"] == 0.5
    np.testing.assert_array_equal(np.load(model_dir / "item_factors.npy"), np.load(model_dir / "item_embeddings.npy"))

    model = load_model_dir(model_dir)
    assert isinstance(model, ALSModel)
    assert model.version == config["model_version"] and model.model_dir == model_dir
    assert model.item_ids == data.item_vocab.ids and model.user_vocab.ids == data.user_vocab.ids
    assert model.item_embeddings.shape == (data.num_items, PARAMS.factors)
    assert model.item_popularity.sum() == data.num_interactions
    assert model.max_history >= max(len(s) for s in data.sequences)
    assert len(model.items) == data.num_items
    user = data.user_vocab.ids[7]
    assert model.training_history(user) == data.item_vocab.decode(data.sequences[7] - 1)
    np.testing.assert_array_equal(model.training_history_indices(7), data.sequences[7] - 1)
    assert model.training_history("nobody") == []
    assert model.new_item_calibration(0.5) is None

    history = list(model.training_history_indices(7))
    vectors, attributions = model.encode_histories([history, []])
    assert vectors.shape == (2, PARAMS.factors) and len(attributions[0]) == len(history) and len(attributions[1]) == 0
    np.testing.assert_allclose(vectors, model.user_vectors([history, []]), atol=1e-6)


def test_batch_recommendations_follow_the_users_cluster_and_skip_their_history(model_dir, shuffled,
                                                                               order_free_data):
    data, clusters = shuffled
    model = load_model_dir(model_dir)
    users = np.arange(50)
    items, scores = model.recommend_indices(users, 10)
    assert items.shape == scores.shape == (50, 10)
    assert (np.diff(scores, axis=1) <= 0).all()
    truth = synthetic_truth(order_free_data)
    shares = []
    for row, user in enumerate(users):
        assert not set(items[row]) & set(model.training_history_indices(user).tolist())
        shares.append(in_cluster(items[row], clusters, truth.user_cluster_of(data.user_vocab.ids[user])))
    assert np.mean(shares) >= 0.8


def test_new_items_get_their_categorys_vectors(model_dir, shuffled):
    _, clusters = shuffled
    model = load_model_dir(model_dir)
    category_of = {}
    for index, record in enumerate(model.items):
        for category in record["categories"]:
            category_of.setdefault(category, []).append(index)
    category, members = max(category_of.items(), key=lambda pair: len(pair[1]))
    cluster = np.bincount(clusters[members]).argmax()
    vectors = model.encode_items([{"item_id": "new", "categories": [category]}, {"item_id": "plain"}])
    assert vectors.shape == (2, PARAMS.factors)
    np.testing.assert_allclose(vectors[0], model.item_factors[members].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(vectors[1], model.item_factors.mean(axis=0), atol=1e-6)
    # a fan of the category's cluster scores the new item above a neutral newcomer
    fan = model.user_vectors([np.flatnonzero(clusters == cluster)[:5]])[0]
    assert vectors[0] @ fan > vectors[1] @ fan


def test_rayrec_recommend_writes_top_k_per_user(model_dir, check_rayrec_recommend):
    check_rayrec_recommend(model_dir)


def test_a_damaged_or_unknown_directory_names_the_problem(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    np.save(broken / "item_factors.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ModelError, match="item_factors.npy .* must hold the same vectors"):
        load_model_dir(broken)
    (broken / "item_factors.npy").unlink()
    with pytest.raises(ModelError, match="missing item_factors.npy"):
        load_model_dir(broken)
    config = json.loads((model_dir / "config.json").read_text())
    future = tmp_path / "future"
    shutil.copytree(model_dir, future)
    (future / "config.json").write_text(json.dumps({**config, "model_kind": "hyperbolic"}))
    from rayrec.models.servable import MODEL_KINDS

    with pytest.raises(ModelError, match=f"model_kind 'hyperbolic'.*known kinds: {', '.join(sorted(MODEL_KINDS))}"):
        load_model_dir(future)
