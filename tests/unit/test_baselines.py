"""Baselines on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.evaluation import metrics
from rayrec.evaluation.baselines import (
    EASEBaseline,
    ItemKNNBaseline,
    PopularityBaseline,
    fit_ease_tuned,
    item_cooccurrence,
)
from rayrec.data.preprocessing import interaction_matrix
from rayrec.evaluation.protocol import evaluate_ranking

GROUP_SIZE = 5
NUM_ITEMS = 2 * GROUP_SIZE
USERS_A, USERS_B = 12, 8  # group A is larger, so popularity favours A's items for everyone


def two_groups():
    """Users of group A only consume items 0-4, users of group B only items 5-9.

    Each user trains on 3 of their group's 5 items; the two left out are the validation and
    test targets, rotated across users so every within-group pair co-occurs.
    Returns (train_seqs, valid_targets, test_targets, group_of_user).
    """
    train, valid, test, group = [], [], [], []
    for user in range(USERS_A + USERS_B):
        g = 0 if user < USERS_A else 1
        offset = g * GROUP_SIZE
        held_out = [user % GROUP_SIZE, (user + 2) % GROUP_SIZE]
        train.append(np.array([offset + i for i in range(GROUP_SIZE) if i not in held_out], dtype=np.int64))
        valid.append(offset + held_out[0])
        test.append(offset + held_out[1])
        group.append(g)
    return train, np.array(valid), np.array(test), np.array(group)


@pytest.mark.parametrize(
    "model",
    [EASEBaseline(l2=1.0), EASEBaseline(l2=1.0, solver="items"), ItemKNNBaseline(k_neighbors=3, shrink=1.0)],
    ids=["ease-users", "ease-items", "item_knn"],
)
def test_collaborative_baselines_recommend_the_users_own_group(model):
    train, _, _, group = two_groups()
    model.fit(train, NUM_ITEMS)
    scores = model.score(np.arange(len(train)))
    assert scores.shape == (len(train), NUM_ITEMS) and scores.dtype == np.float32
    for user, seen in enumerate(train):
        own = np.arange(GROUP_SIZE) + group[user] * GROUP_SIZE
        unseen_own = np.setdiff1d(own, seen)
        other = np.setdiff1d(np.arange(NUM_ITEMS), own)
        assert scores[user, unseen_own].min() > scores[user, other].max(), f"user {user}: {scores[user]}"


@pytest.mark.parametrize("model", [EASEBaseline(l2=1.0), ItemKNNBaseline(k_neighbors=3)], ids=["ease", "item_knn"])
def test_collaborative_baselines_beat_popularity(model):
    train, valid, test, group = two_groups()
    histories = [np.append(seq, v) for seq, v in zip(train, valid)]
    model.fit(train, NUM_ITEMS)
    popularity = PopularityBaseline().fit(train, NUM_ITEMS)
    model_result = evaluate_ranking(model.score, histories, test, NUM_ITEMS, ks=(1,))
    popularity_result = evaluate_ranking(popularity.score, histories, test, NUM_ITEMS, ks=(1,))
    # Only one own-group item is left unmasked, the target, so a model that keeps to the
    # user's group ranks it first. Popularity recommends group A's items to group B too.
    assert model_result["HR@1"] == 1.0
    assert popularity_result["HR@1"] < 1.0
    b_users = group == 1
    b_result = evaluate_ranking(popularity.score, histories, np.where(b_users, test, -1), NUM_ITEMS, ks=(1,))
    assert b_result["HR@1"] == 0.0


def test_popularity_scores_are_interaction_counts():
    train = [np.array([0, 1, 1]), np.array([1, 2]), np.array([], dtype=np.int64)]
    model = PopularityBaseline().fit(train, 4)
    # Item 0 once, item 1 three times (repeats count), item 2 once, item 3 never.
    np.testing.assert_array_equal(model.score(np.array([0, 2])), [[1, 3, 1, 0], [1, 3, 1, 0]])
    np.testing.assert_array_equal(metrics.top_k(model.score(np.array([0])), 4), [[1, 0, 2, 3]])


def naive_ease_weights(train, num_items, l2):
    """Textbook EASE, written out once more to check the fitted model against."""
    x = interaction_matrix(train, num_items, dtype=np.float64)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(num_items))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return x, b


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)], ids=["more-users", "more-items"])
def test_ease_solvers_match_the_textbook_formula(shape):
    num_users, num_items = shape
    rng = np.random.default_rng(3)
    train = [rng.choice(num_items, size=rng.integers(1, 6), replace=False) for _ in range(num_users)]
    x, b = naive_ease_weights(train, num_items, l2=5.0)
    expected = x @ b
    for solver in ("items", "users", "auto"):
        model = EASEBaseline(l2=5.0, solver=solver).fit(train, num_items)
        np.testing.assert_allclose(model.score(np.arange(num_users)), expected, atol=1e-5)
    auto = EASEBaseline(l2=5.0).fit(train, num_items)
    assert auto.solver_used == ("items" if num_users >= num_items else "users")
    # Fold-in: a history that is no training row is scored with the same weights.
    history = np.array([0, 3])
    np.testing.assert_allclose(auto.score_histories([history])[0], b[history].sum(axis=0), atol=1e-5)


def test_ease_weights_have_a_zero_diagonal():
    train, *_ = two_groups()
    model = EASEBaseline(l2=1.0, solver="items").fit(train, NUM_ITEMS)
    np.testing.assert_array_equal(np.diag(model.weights), 0.0)


def test_fit_ease_tuned_keeps_the_best_validation_lambda():
    rng = np.random.default_rng(4)
    train = [rng.choice(40, size=8, replace=False) for _ in range(60)]
    valid = np.array([rng.choice(np.setdiff1d(np.arange(40), seq)) for seq in train])
    valid[::7] = -1  # users without a validation item are skipped, not an error
    lambdas = (0.5, 5.0, 50.0, 500.0)
    model, l2 = fit_ease_tuned(train, valid, 40, lambdas=lambdas)
    assert l2 in lambdas and model.l2 == l2
    assert set(model.validation_ndcg) == set(lambdas)
    assert model.validation_ndcg[l2] == max(model.validation_ndcg.values())
    refit = EASEBaseline(l2).fit(train, 40)
    np.testing.assert_allclose(
        evaluate_ranking(refit.score, train, valid, 40, ks=(10,))["NDCG@10"], model.validation_ndcg[l2]
    )


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)], ids=["more-users", "more-items"])
def test_ease_item_weights_are_the_textbook_matrix_for_either_solver(shape):
    num_users, num_items = shape
    rng = np.random.default_rng(6)
    train = [rng.choice(num_items, size=rng.integers(1, 6), replace=False) for _ in range(num_users)]
    _, b = naive_ease_weights(train, num_items, l2=5.0)
    for solver in ("items", "users"):
        model = EASEBaseline(l2=5.0, solver=solver).fit(train, num_items)
        model.weight_block = 5  # several column blocks, the last one partial
        weights = model.item_weights()
        assert weights.shape == (num_items, num_items) and weights.dtype == np.float32
        np.testing.assert_allclose(weights, b, atol=1e-5)
        np.testing.assert_array_equal(np.diag(weights), 0.0)
        history = np.array([1, 4, 7])
        np.testing.assert_allclose(model.score_histories([history])[0], weights[history].sum(axis=0), atol=1e-5)


def test_item_cooccurrence_counts_users_who_have_both_items():
    rng = np.random.default_rng(7)
    # repeats within a user count once, as in the binary matrix
    train = [rng.choice(25, size=rng.integers(0, 9)) for _ in range(40)]
    x = interaction_matrix(train, 25, dtype=np.float64)
    np.testing.assert_array_equal(item_cooccurrence(train, 25), x.T @ x)
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        item_cooccurrence([np.array([25])], 25)


def test_fit_ease_tuned_stops_at_its_deadline_and_breaks_ties_toward_the_smaller_l2():
    train, valid, _, _ = two_groups()
    model, l2 = fit_ease_tuned(train, valid, NUM_ITEMS, lambdas=(50.0, 5.0, 500.0), deadline=0.0)
    assert l2 == 50.0 and list(model.validation_ndcg) == [50.0]  # past the deadline: the first value only
    assert set(model.validation_metrics[50.0]) >= {"NDCG@10", "HR@10"}
    assert model.validation_metrics[50.0]["NDCG@10"] == model.validation_ndcg[50.0]
    # two_groups ranks the same way for any small l2: equal NDCG, and the smaller l2 is kept
    model, l2 = fit_ease_tuned(train, valid, NUM_ITEMS, lambdas=(0.2, 0.1))
    assert model.validation_ndcg[0.1] == model.validation_ndcg[0.2] and l2 == 0.1


def test_item_knn_cosine_similarity_by_hand():
    # Users {0,1}, {0,1,2}, {2}: every item seen twice; co-occurrences (0,1)=2, (0,2)=(1,2)=1.
    train = [np.array([0, 1]), np.array([0, 1, 2]), np.array([2])]
    model = ItemKNNBaseline(k_neighbors=2, shrink=0.0).fit(train, 3)
    # sim(0,1) = 2 / (sqrt2 * sqrt2) = 1; sim(0,2) = 1 / 2; an item is not its own neighbour
    np.testing.assert_allclose(model.score_histories([np.array([0])]), [[0.0, 1.0, 0.5]], rtol=1e-6)
    # shrink 1: sim(0,1) = 2 / (2 + 1), sim(0,2) = 1 / (2 + 1)
    shrunk = ItemKNNBaseline(k_neighbors=2, shrink=1.0).fit(train, 3)
    np.testing.assert_allclose(shrunk.score_histories([np.array([0])]), [[0.0, 2 / 3, 1 / 3]], rtol=1e-6)
    # One neighbour: item 0 keeps only item 1, so item 2 gets nothing from it.
    nearest = ItemKNNBaseline(k_neighbors=1, shrink=0.0).fit(train, 3)
    np.testing.assert_allclose(nearest.score_histories([np.array([0])]), [[0.0, 1.0, 0.0]], rtol=1e-6)


def test_item_knn_scoring_chunks_give_the_same_scores():
    rng = np.random.default_rng(5)
    train = [rng.choice(50, size=rng.integers(1, 20), replace=False) for _ in range(40)]
    model = ItemKNNBaseline(k_neighbors=10).fit(train, 50)
    whole = model.score(np.arange(40))
    model.scatter_chunk = 30  # 3 history items per chunk: most users alone, some split apart
    np.testing.assert_allclose(model.score(np.arange(40)), whole, rtol=1e-6)
    # Reference: sum each history item's kept neighbour similarities one by one.
    expected = np.zeros((40, 50))
    for user, seq in enumerate(train):
        for item in seq:
            expected[user, model.neighbors[item]] += model.similarities[item]
    np.testing.assert_allclose(whole, expected, rtol=1e-5)


def test_baselines_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        PopularityBaseline().fit([np.array([0, 3])], 3)
    with pytest.raises(ValueError, match="l2 must be positive"):
        EASEBaseline(l2=0)
    with pytest.raises(ValueError, match="k_neighbors"):
        ItemKNNBaseline(k_neighbors=0)


def dense_item_knn_scores(train, num_items, histories, k_neighbors, shrink):
    """Item-kNN written out once more on the dense user-item matrix, to check the sparse fit."""
    x = interaction_matrix(train, num_items, dtype=np.float32)
    norms = np.sqrt(x.sum(axis=0))
    denominator = norms[:, None] * norms[None, :] + shrink
    sims = np.divide(x.T @ x, denominator, out=np.zeros((num_items, num_items), np.float32), where=denominator > 0)
    np.fill_diagonal(sims, 0.0)
    kept = np.zeros_like(sims)
    top = np.argpartition(-sims, k_neighbors - 1, axis=1)[:, :k_neighbors]
    np.put_along_axis(kept, top, np.take_along_axis(sims, top, axis=1), axis=1)
    return interaction_matrix(histories, num_items, dtype=np.float32) @ kept


@pytest.mark.parametrize("shape", [(60, 25), (25, 60)], ids=["more-users", "more-items"])
def test_sparse_baselines_rank_exactly_as_the_dense_formulas(shape):
    num_users, num_items = shape
    rng = np.random.default_rng(11)
    # repeats within a history, users with one item, and items nobody has
    train = [rng.choice(num_items - 3, size=rng.integers(1, 9)) for _ in range(num_users)]
    valid = np.array([rng.integers(num_items) for _ in range(num_users)])
    test = np.array([rng.integers(num_items) for _ in range(num_users)])
    histories = [np.append(seq, v) for seq, v in zip(train, valid)]
    x, b = naive_ease_weights(train, num_items, l2=5.0)
    expected = {
        "ease-items": interaction_matrix(histories, num_items, dtype=np.float64) @ b,
        "ease-users": interaction_matrix(histories, num_items, dtype=np.float64) @ b,
        "item_knn": dense_item_knn_scores(train, num_items, histories, k_neighbors=4, shrink=1.0),
    }
    models = {
        "ease-items": EASEBaseline(l2=5.0, solver="items"),
        "ease-users": EASEBaseline(l2=5.0, solver="users"),
        "item_knn": ItemKNNBaseline(k_neighbors=4, shrink=1.0),
    }
    for name, model in models.items():
        model.fit(train, num_items)
        scores = model.score_histories(histories)
        np.testing.assert_allclose(scores, expected[name], atol=1e-5, err_msg=name)
        reference = expected[name].astype(np.float32)
        got = evaluate_ranking(lambda users: scores[users], histories, test, num_items, ks=(5, 10))
        want = evaluate_ranking(lambda users: reference[users], histories, test, num_items, ks=(5, 10))
        assert got == pytest.approx(want, abs=1e-12), name


@pytest.mark.parametrize(("name", "num_users", "num_items"), [
    ("item_knn", 50_000, 1_000), ("ease-items", 50_000, 1_000), ("ease-users", 500, 40_000)])
def test_baselines_never_hold_a_dense_users_by_items_matrix(name, num_users, num_items):
    import tracemalloc

    import scipy.sparse

    rng = np.random.default_rng(0)
    train = list(rng.integers(0, num_items, size=(num_users, 5)))
    model = {"item_knn": ItemKNNBaseline(k_neighbors=20), "ease-items": EASEBaseline(l2=10.0, solver="items"),
             "ease-users": EASEBaseline(l2=10.0, solver="users")}[name]
    dense_bytes = num_users * num_items * 4  # the float32 users x items matrix
    tracemalloc.start()
    try:
        model.fit(train, num_items)
        scores = model.score(np.arange(4))  # a batch of (4, N) scores is the method's own
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scores.shape == (4, num_items)
    assert peak < dense_bytes / 4, f"{name} peaked at {peak / 1e6:.0f} MB; the dense matrix is {dense_bytes / 1e6:.0f} MB"
    if name == "ease-users":
        assert scipy.sparse.issparse(model._x)
