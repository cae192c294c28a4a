"""Ranking metrics computed from a score matrix, vectorised with numpy.

Everything works on ``scores: (U, N)``: one row per evaluated user, one column per item.
Items the user already consumed are masked with :func:`mask_history` before ranking, so a
model is never rewarded for recommending what the user has seen.

Tie rule, the only one (shared by :func:`top_k` and :func:`target_ranks`, so by ``rayrec
evaluate``, the validation that early stopping and model selection use, and the baselines):
items are ordered by descending score and, among equal scores, by ascending item index. This is the order a deterministic
recommendation list shows, so "the target is in ``top_k(scores, k)``" and
"``target_ranks(scores, targets) < k``" always agree. It is also neither optimistic nor
pessimistic by construction: a model that gives every item the same score does not get a
perfect hit rate (as it would if ties counted in the target's favour). NaN scores are
treated as ``-inf``.

Per-user metric functions return ``(U,) float64`` arrays rather than means, so callers can
sum them across batches, drop users, or run significance tests.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

def _nan_as_lowest(scores: np.ndarray) -> np.ndarray:
    """Float ``scores`` with NaN replaced by ``-inf`` (a copy only when needed)."""
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)  # negating unsigned ints would wrap around
    if np.isnan(scores).any():
        return np.where(np.isnan(scores), -np.inf, scores)
    return scores


def mask_history(scores: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Set each user's history items to ``-inf``, in place; returns ``scores``.

    scores: (U, N) float; histories: U int arrays of item indices (row ``u`` masks
    ``histories[u]``; duplicates are fine). Modifies ``scores``: pass a copy if the caller's
    array must stay intact.
    """
    if len(histories) != scores.shape[0]:
        raise ValueError(f"got {len(histories)} histories for {scores.shape[0]} score rows")
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if lengths.sum() == 0:
        return scores
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    scores[rows, cols] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first: (U, N) -> (U, min(k, N)) int64.

    Ties are broken by lower item index (see the module docstring). ``argpartition`` alone
    picks arbitrarily among items tied at the k-th score, so rows with such a boundary tie
    are re-ranked with a stable full sort; other rows only sort their ``k`` selected items.
    """
    scores = _nan_as_lowest(np.asarray(scores))
    num_users, num_items = scores.shape
    k = min(int(k), num_items)
    if k <= 0:
        return np.empty((num_users, 0), dtype=np.int64)
    neg = -scores  # ascending order of ``neg`` is descending order of score
    selected = np.argpartition(neg, k - 1, axis=1)[:, :k]
    selected_neg = np.take_along_axis(neg, selected, axis=1)
    threshold = selected_neg.max(axis=1, keepdims=True)  # the k-th best score (negated)
    tied_total = (neg == threshold).sum(axis=1)
    tied_selected = (selected_neg == threshold).sum(axis=1)
    boundary_tie = np.flatnonzero(tied_total > tied_selected)
    if boundary_tie.size:
        # Stable sort keeps lower indices first among equal scores.
        selected[boundary_tie] = np.argsort(neg[boundary_tie], axis=1, kind="stable")[:, :k]
        selected_neg[boundary_tie] = np.take_along_axis(neg[boundary_tie], selected[boundary_tie], axis=1)
    # Primary key: score (descending); secondary: item index (ascending).
    order = np.lexsort((selected, selected_neg), axis=1)
    return np.take_along_axis(selected, order, axis=1).astype(np.int64, copy=False)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of one target item per row: (U, N), (U,) -> (U,) int64.

    Among items with exactly its score the target sits after those with a lower index and
    before those with a higher one: its position in :func:`top_k`'s list (the module's tie
    rule). A masked target (score ``-inf``) still gets a rank, among the other masked items.
    """
    scores = _nan_as_lowest(np.asarray(scores))
    targets = np.asarray(targets, dtype=np.int64)
    num_users, num_items = scores.shape
    if targets.shape != (num_users,):
        raise ValueError(f"targets must have shape ({num_users},), got {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"target indices must be in [0, {num_items}); drop skipped (-1) users first")
    target_scores = scores[np.arange(num_users), targets][:, None]
    higher = (scores > target_scores).sum(axis=1)
    tied_before = ((scores == target_scores) & (np.arange(num_items)[None, :] < targets[:, None])).sum(axis=1)
    return (higher + tied_before).astype(np.int64)


# --- Leave-one-out metrics: one target per user, from its rank -------------------------------


def hit_rate_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 where the target is in the top ``k``, else 0: ranks (U,) -> (U,) float64."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """``1 / log2(rank + 2)`` where rank < k, else 0: (U,) -> (U,) float64.

    With a single relevant item the ideal DCG is 1, so this is already normalised.
    """
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank ``1 / (rank + 1)`` where rank < k, else 0: (U,) -> (U,) float64."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)


# --- Metrics for sets of relevant items, from the top-k lists ----------------------------------


def relevance_matrix(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """Which recommended items are relevant: topk (U, K), U arrays -> (U, K) bool.

    Vectorised by encoding each (row, item) pair as one integer key, so there is no Python
    loop over positions.
    """
    topk = np.asarray(topk, dtype=np.int64)
    if len(relevant) != topk.shape[0]:
        raise ValueError(f"got {len(relevant)} relevant sets for {topk.shape[0]} rows")
    relevant = [np.asarray(r, dtype=np.int64) for r in relevant]
    lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
    if topk.size == 0 or lengths.sum() == 0:
        return np.zeros(topk.shape, dtype=bool)
    flat_relevant = np.concatenate(relevant)
    stride = int(max(topk.max(), flat_relevant.max())) + 1
    relevant_keys = np.repeat(np.arange(len(relevant)), lengths) * stride + flat_relevant
    topk_keys = np.arange(topk.shape[0])[:, None] * stride + topk
    return np.isin(topk_keys, relevant_keys)


def _relevant_counts(relevant: Sequence[np.ndarray]) -> np.ndarray:
    # Duplicates in a relevant set must not inflate its size.
    return np.fromiter((len(np.unique(r)) for r in relevant), dtype=np.float64, count=len(relevant))


def recall_at_k(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """Share of the relevant items found in the list: (U, K), U arrays -> (U,) float64.

    K is ``topk.shape[1]``. Users with no relevant item get 0; drop them before averaging.
    """
    hits = relevance_matrix(topk, relevant).sum(axis=1)
    counts = _relevant_counts(relevant)
    return np.divide(hits, counts, out=np.zeros(len(counts)), where=counts > 0)


def precision_at_k(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """Share of the K recommended items that are relevant: (U, K), U arrays -> (U,) float64."""
    topk = np.asarray(topk)
    if topk.shape[1] == 0:
        return np.zeros(topk.shape[0])
    return relevance_matrix(topk, relevant).sum(axis=1) / topk.shape[1]


def f1_at_k(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """Harmonic mean of precision and recall (0 where both are 0): -> (U,) float64."""
    precision = precision_at_k(topk, relevant)
    recall = recall_at_k(topk, relevant)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def ndcg_at_k_sets(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """NDCG with binary gains: (U, K), U arrays -> (U,) float64.

    DCG = sum over relevant positions p (0-based) of 1 / log2(p + 2); the ideal DCG puts
    ``min(|relevant|, K)`` relevant items first. Users with no relevant item get 0.
    """
    hits = relevance_matrix(topk, relevant)
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)  # (K,)
    dcg = hits @ discounts
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])  # IDCG for 0..K relevant
    ideal_count = np.minimum(_relevant_counts(relevant), k).astype(np.int64)
    idcg = ideal_cumulative[ideal_count]
    return np.divide(dcg, idcg, out=np.zeros(len(idcg)), where=idcg > 0)


def hit_rate_at_k_sets(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """1 where any relevant item is in the list, else 0: -> (U,) float64."""
    return relevance_matrix(topk, relevant).any(axis=1).astype(np.float64)


def mrr_at_k_sets(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """``1 / (p + 1)`` for the first relevant position p in the list, else 0: -> (U,) float64."""
    hits = relevance_matrix(topk, relevant)
    first = hits.argmax(axis=1)  # 0 for rows without a hit; masked out below
    return np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)


def coverage_at_k(topk: np.ndarray, num_items: int) -> float:
    """Distinct recommended items over the catalogue size: (U, K) -> float in [0, 1]."""
    return len(np.unique(np.asarray(topk))) / num_items
