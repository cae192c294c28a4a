"""Ranking metrics and the evaluation protocol against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayrec.evaluation import metrics
from rayrec.evaluation.protocol import evaluate_ranking, format_table


def reference_order(row: np.ndarray) -> np.ndarray:
    """Full ranking by descending score, then ascending index (the documented tie rule)."""
    row = np.where(np.isnan(row), -np.inf, row)
    return np.lexsort((np.arange(len(row)), -row))


# --- mask_history -------------------------------------------------------------------------------


def test_mask_history_sets_history_items_to_minus_inf_in_place():
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], dtype=np.float32)
    out = metrics.mask_history(scores, [np.array([1, 3, 3]), np.array([], dtype=np.int64)])
    assert out is scores
    np.testing.assert_array_equal(scores[0], np.array([0.1, -np.inf, 0.3, -np.inf], dtype=np.float32))
    np.testing.assert_array_equal(scores[1], np.array([0.5, 0.6, 0.7, 0.8], dtype=np.float32))


def test_mask_history_rejects_a_history_count_that_does_not_match_the_rows():
    with pytest.raises(ValueError, match="2 histories for 1 score rows"):
        metrics.mask_history(np.zeros((1, 3)), [np.array([0]), np.array([1])])


# --- top_k --------------------------------------------------------------------------------------


def test_top_k_orders_by_score_and_breaks_ties_by_lower_index():
    scores = np.array([[0.1, 0.5, 0.5, 0.9, 0.2]])
    # 0.9 (item 3) first; items 1 and 2 tie at 0.5 -> lower index 1 before 2; then 0.2 (item 4).
    np.testing.assert_array_equal(metrics.top_k(scores, 2), [[3, 1]])
    np.testing.assert_array_equal(metrics.top_k(scores, 4), [[3, 1, 2, 4]])


def test_top_k_with_all_scores_equal_returns_the_lowest_indices():
    np.testing.assert_array_equal(metrics.top_k(np.zeros((2, 6)), 3), [[0, 1, 2], [0, 1, 2]])


def test_top_k_puts_masked_and_nan_items_last_and_clamps_k():
    scores = np.array([[0.3, np.nan, 0.7, 0.1]])
    metrics.mask_history(scores, [np.array([2])])
    # 0.3 (item 0) > 0.1 (item 3) > -inf (item 1 is NaN, item 2 masked; tie -> lower index first)
    np.testing.assert_array_equal(metrics.top_k(scores, 10), [[0, 3, 1, 2]])


@pytest.mark.parametrize("k", [1, 3, 7, 15, 30])
def test_top_k_matches_a_full_stable_sort_on_heavily_tied_scores(k):
    rng = np.random.default_rng(k)
    # Few distinct values, so most rows have ties straddling the k-th position.
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float32)
    expected = np.stack([reference_order(row)[:k] for row in scores])
    np.testing.assert_array_equal(metrics.top_k(scores, k), expected)


# --- target_ranks -------------------------------------------------------------------------------


def test_target_ranks_tie_rule():
    scores = np.array([[0.3, 0.7, 0.3, 0.3, 0.1]])
    target = np.array([2])
    # Strictly higher: item 1 (0.7). Tied at 0.3: item 0 (lower index) counts, item 3 does not.
    assert metrics.target_ranks(scores, target)[0] == 2
    assert metrics.top_k(scores, 5)[0].tolist().index(2) == 2  # the same position as in the list


def test_a_constant_model_does_not_get_a_perfect_rank():
    # The pitfall of counting only strictly higher scores: every target would rank 0.
    scores = np.zeros((3, 100))
    np.testing.assert_array_equal(metrics.target_ranks(scores, np.array([0, 50, 99])), [0, 50, 99])


def test_target_ranks_agree_with_top_k_membership():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(300, 40)).astype(np.float64)
    targets = rng.integers(0, 40, size=300)
    ranks = metrics.target_ranks(scores, targets)
    for k in (1, 5, 10):
        in_list = (metrics.top_k(scores, k) == targets[:, None]).any(axis=1)
        np.testing.assert_array_equal(in_list, ranks < k)


def test_target_ranks_reject_skipped_users():
    with pytest.raises(ValueError, match="drop skipped"):
        metrics.target_ranks(np.zeros((2, 3)), np.array([0, -1]))


# --- leave-one-out metrics ----------------------------------------------------------------------


def test_leave_one_out_metrics_from_ranks():
    ranks = np.array([0, 1, 4, 10])
    k = 5
    np.testing.assert_array_equal(metrics.hit_rate_at_k(ranks, k), [1, 1, 1, 0])
    # NDCG: 1/log2(0+2) = 1; 1/log2(3) = 0.63093; 1/log2(6) = 0.38685; rank 10 >= k -> 0
    np.testing.assert_allclose(metrics.ndcg_at_k(ranks, k), [1.0, 0.6309298, 0.3868528, 0.0], atol=1e-6)
    # MRR: 1/1, 1/2, 1/5, 0
    np.testing.assert_allclose(metrics.mrr_at_k(ranks, k), [1.0, 0.5, 0.2, 0.0])


# --- metrics over sets of relevant items --------------------------------------------------------


TOPK = np.array([[5, 2, 7, 1], [3, 4, 0, 9]])
RELEVANT = [np.array([2, 1, 8]), np.array([6])]


def test_relevance_matrix_marks_the_relevant_positions():
    np.testing.assert_array_equal(
        metrics.relevance_matrix(TOPK, RELEVANT), [[False, True, False, True], [False] * 4]
    )


def test_set_metrics_by_hand():
    # Row 0: hits at positions 1 (item 2) and 3 (item 1); 3 relevant items, K = 4.
    #   recall = 2/3, precision = 2/4, F1 = 2 * 0.5 * 0.6667 / 1.1667 = 4/7
    #   DCG = 1/log2(3) + 1/log2(5) = 0.630930 + 0.430677 = 1.061606
    #   IDCG (3 relevant first) = 1 + 0.630930 + 0.5 = 2.130930 -> NDCG = 0.498184
    #   first hit at position 1 -> MRR = 1/2
    # Row 1: its one relevant item (6) is not in the list -> everything 0.
    np.testing.assert_allclose(metrics.recall_at_k(TOPK, RELEVANT), [2 / 3, 0])
    np.testing.assert_allclose(metrics.precision_at_k(TOPK, RELEVANT), [0.5, 0])
    np.testing.assert_allclose(metrics.f1_at_k(TOPK, RELEVANT), [4 / 7, 0])
    np.testing.assert_allclose(metrics.ndcg_at_k_sets(TOPK, RELEVANT), [1.061606 / 2.130930, 0], atol=1e-6)
    np.testing.assert_array_equal(metrics.hit_rate_at_k_sets(TOPK, RELEVANT), [1, 0])
    np.testing.assert_allclose(metrics.mrr_at_k_sets(TOPK, RELEVANT), [0.5, 0])


def test_ndcg_ideal_is_capped_at_k_when_there_are_more_relevant_items_than_slots():
    topk = np.array([[0, 1]])
    relevant = [np.array([0, 1, 2, 3, 4, 5])]
    # Both slots hit: DCG = 1 + 1/log2(3) equals the ideal over min(6, 2) = 2 slots -> 1.
    np.testing.assert_allclose(metrics.ndcg_at_k_sets(topk, relevant), [1.0])
    np.testing.assert_allclose(metrics.recall_at_k(topk, relevant), [2 / 6])


def test_duplicate_relevant_items_count_once():
    topk = np.array([[4, 9]])
    np.testing.assert_allclose(metrics.recall_at_k(topk, [np.array([4, 4, 7])]), [1 / 2])
    # IDCG over min(2 distinct, 2) = 1 + 1/log2(3); DCG = 1 (hit at position 0)
    np.testing.assert_allclose(
        metrics.ndcg_at_k_sets(topk, [np.array([4, 4, 7])]), [1 / (1 + 1 / math.log2(3))]
    )


def test_set_metrics_with_one_relevant_item_match_the_rank_metrics():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(100, 50))
    targets = rng.integers(0, 50, size=100)
    ranks = metrics.target_ranks(scores, targets)
    topk = metrics.top_k(scores, 10)
    relevant = list(targets[:, None])
    np.testing.assert_allclose(metrics.hit_rate_at_k_sets(topk, relevant), metrics.hit_rate_at_k(ranks, 10))
    np.testing.assert_allclose(metrics.recall_at_k(topk, relevant), metrics.hit_rate_at_k(ranks, 10))
    np.testing.assert_allclose(metrics.ndcg_at_k_sets(topk, relevant), metrics.ndcg_at_k(ranks, 10))
    np.testing.assert_allclose(metrics.mrr_at_k_sets(topk, relevant), metrics.mrr_at_k(ranks, 10))


def test_coverage_counts_distinct_recommended_items():
    # Items {0, 1, 2} out of 10.
    assert metrics.coverage_at_k(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)


# --- protocol -----------------------------------------------------------------------------------


SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.5, 0.3],  # user 0: history {0} -> order 1, 3, 4, 2 (0 masked)
        [0.0, 0.0, 0.0, 0.0, 0.0],  # user 1: skipped (target -1)
        [0.1, 0.2, 0.3, 0.4, 0.5],  # user 2: history {4, 3} -> order 2, 1, 0
    ],
    dtype=np.float32,
)
HISTORIES = [np.array([0]), np.array([1, 2]), np.array([4, 3])]
TARGETS = np.array([3, -1, 0])  # user 0's target at rank 1, user 2's at rank 2


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_evaluate_ranking_by_hand(batch_size):
    calls = []

    def score_fn(users):
        calls.append(users.tolist())
        return SCORES[users]

    result = evaluate_ranking(score_fn, HISTORIES, TARGETS, num_items=5, ks=(1, 2), batch_size=batch_size)
    assert sorted(u for batch in calls for u in batch) == [0, 2]  # the skipped user is never scored
    assert result["users"] == 2
    # Ranks 1 and 2: nothing in the top 1; only user 0 in the top 2.
    assert result["HR@1"] == 0 and result["NDCG@1"] == 0 and result["MRR@1"] == 0
    assert result["HR@2"] == pytest.approx(0.5)
    assert result["Recall@2"] == pytest.approx(0.5)
    assert result["NDCG@2"] == pytest.approx((1 / math.log2(3)) / 2)  # 0.315465
    assert result["MRR@2"] == pytest.approx(0.5 / 2)
    assert result["Precision@2"] == pytest.approx((1 / 2) / 2)  # user 0: 1 hit of 2 slots
    assert result["F1@2"] == pytest.approx((2 * 0.5 * 1 / 1.5) / 2)  # user 0: P = 0.5, R = 1
    # Top-1 lists: {1}, {2} -> 2/5; top-2 lists: {1, 3}, {2, 1} -> 3/5
    assert result["Coverage@1"] == pytest.approx(0.4)
    assert result["Coverage@2"] == pytest.approx(0.6)


def test_evaluate_ranking_leaves_the_models_scores_untouched():
    stored = SCORES.copy()
    evaluate_ranking(lambda users: stored[users], HISTORIES, TARGETS, num_items=5, ks=(2,))
    np.testing.assert_array_equal(stored, SCORES)


def test_evaluate_ranking_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    from_numpy = evaluate_ranking(lambda u: SCORES[u], HISTORIES, TARGETS, 5, ks=(2,))
    from_torch = evaluate_ranking(lambda u: torch.from_numpy(SCORES[u]), HISTORIES, TARGETS, 5, ks=(2,))
    assert from_torch == from_numpy


def test_evaluate_ranking_recall_equals_hit_rate_with_one_target():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 3, size=(500, 60)).astype(np.float32)  # ties on purpose
    histories = [rng.choice(60, size=5, replace=False) for _ in range(500)]
    targets = rng.integers(0, 60, size=500)
    result = evaluate_ranking(lambda u: scores[u], histories, targets, 60, ks=(10, 20), batch_size=64)
    for k in (10, 20):
        assert result[f"Recall@{k}"] == pytest.approx(result[f"HR@{k}"])


def test_evaluate_ranking_errors_name_the_problem():
    with pytest.raises(ValueError, match="expected \\(2, 5\\)"):
        evaluate_ranking(lambda u: np.zeros((len(u), 4)), HISTORIES, TARGETS, 5)
    with pytest.raises(ValueError, match="every target is -1"):
        evaluate_ranking(lambda u: SCORES[u], HISTORIES, np.array([-1, -1, -1]), 5)
    with pytest.raises(ValueError, match="one of each per user"):
        evaluate_ranking(lambda u: SCORES[u], HISTORIES[:2], TARGETS, 5)


def test_format_table_aligns_columns():
    table = format_table(
        {"popularity": {"HR@10": 0.0859, "NDCG@10": 0.04491, "users": 943}, "ease (l2=100)": {"HR@10": 0.13793}},
        metrics=("HR@10", "NDCG@10", "users"),
    )
    lines = table.splitlines()
    assert lines[0].split() == ["model", "HR@10", "NDCG@10", "users"]
    assert lines[2].split() == ["popularity", "0.0859", "0.0449", "943"]
    assert lines[3].split() == ["ease", "(l2=100)", "0.1379", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # right-aligned numbers end in one column
