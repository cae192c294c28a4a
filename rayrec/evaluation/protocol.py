"""Full-ranking leave-one-out evaluation, batched so memory stays bounded.

Protocol (see ``shared/datasets/README.md``): each evaluated user has one held-out target
item; the model scores every item, the user's history is masked, and the target's rank gives
HR, NDCG and MRR. The same top-k lists give Recall, Precision, F1 and catalogue coverage.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from rayrec.evaluation import metrics

#: (B,) user indices -> (B, num_items) scores (numpy, or anything with ``.numpy()`` like a tensor)
ScoreFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_TABLE_METRICS = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "Coverage@10")


def _as_float32_copy(scores) -> np.ndarray:
    """A fresh writable float32 array, so masking never touches the model's own buffers."""
    if hasattr(scores, "detach"):  # torch tensor, without importing torch
        scores = scores.detach().cpu().numpy()
    return np.array(scores, dtype=np.float32, copy=True)


def evaluate_ranking(
    score_fn: ScoreFn,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Rank all items for every user with a target and average the metrics.

    score_fn: (B,) int64 user indices -> (B, num_items) scores.
    histories: one int64 item-index array per user (indexed by user), masked before ranking.
    targets: (U,) int64 held-out item per user; -1 skips the user.

    Returns ``{"HR@k", "Recall@k", "NDCG@k", "MRR@k", "Precision@k", "F1@k", "Coverage@k"}``
    for each k in ``ks`` plus ``"users"``, the number evaluated. Peak memory is about
    ``batch_size * num_items`` scores. With one target per user Recall@k equals HR@k.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if len(histories) != len(targets):
        raise ValueError(f"got {len(histories)} histories but {len(targets)} targets; need one of each per user")
    if targets.max(initial=-1) >= num_items:
        raise ValueError(f"a target index is {targets.max()}, outside the {num_items} items")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive integers, got {ks}")
    users = np.flatnonzero(targets >= 0)
    if users.size == 0:
        raise ValueError("no user to evaluate: every target is -1")

    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("HR", "Recall", "NDCG", "MRR", "Precision", "F1")}
    recommended = {k: np.zeros(num_items, dtype=bool) for k in ks}  # for coverage across batches
    for start in range(0, users.size, batch_size):
        batch_users = users[start : start + batch_size]
        scores = _as_float32_copy(score_fn(batch_users))
        if scores.shape != (batch_users.size, num_items):
            raise ValueError(
                f"score_fn returned shape {scores.shape}, expected ({batch_users.size}, {num_items})"
            )
        metrics.mask_history(scores, [histories[u] for u in batch_users])
        batch_targets = targets[batch_users]
        ranks = metrics.target_ranks(scores, batch_targets)
        lists = metrics.top_k(scores, ks[-1])  # prefixes of the longest list are the shorter lists
        relevant = batch_targets[:, None]  # one relevant item per user
        for k in ks:
            topk = lists[:, :k]
            sums[f"HR@{k}"] += metrics.hit_rate_at_k(ranks, k).sum()
            sums[f"NDCG@{k}"] += metrics.ndcg_at_k(ranks, k).sum()
            sums[f"MRR@{k}"] += metrics.mrr_at_k(ranks, k).sum()
            sums[f"Recall@{k}"] += metrics.recall_at_k(topk, relevant).sum()
            sums[f"Precision@{k}"] += metrics.precision_at_k(topk, relevant).sum()
            sums[f"F1@{k}"] += metrics.f1_at_k(topk, relevant).sum()
            recommended[k][topk.ravel()] = True

    results: dict[str, float] = {}
    for k in ks:
        for name in ("HR", "Recall", "NDCG", "MRR", "Precision", "F1"):
            results[f"{name}@{k}"] = float(sums[f"{name}@{k}"] / users.size)
        results[f"Coverage@{k}"] = float(recommended[k].sum() / num_items)
    results["users"] = int(users.size)
    return results


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
    digits: int = 4,
) -> str:
    """A plain aligned text table: one row per model, one column per metric.

    rows: model name -> results of :func:`evaluate_ranking`. Missing values show as ``-``.
    """
    header = ["model", *metrics]

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        return f"{value:.{digits}f}"

    body = [[name, *(cell(result.get(metric)) for metric in metrics)] for name, result in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        # Model names align left, numbers right so their decimal points line up.
        first = line[0].ljust(widths[0])
        rest = (value.rjust(width) for value, width in zip(line[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), separator, *(render(line) for line in body)])


def evaluate_baselines(train: Sequence[np.ndarray], validation: np.ndarray, histories: Sequence[np.ndarray],
                       targets: np.ndarray, num_items: int, log: Callable[[str], None] = print
                       ) -> dict[str, dict[str, float]]:
    """Popularity, EASE (its ``l2`` tuned on ``validation``) and item-kNN, fitted on ``train``
    and ranked for ``targets`` with ``histories`` as input and mask.

    All 0-based with target -1 for none (the form of
    :func:`rayrec.data.splits.leave_one_out_sequences`): ``train`` and ``histories`` hold one
    item array per user, ``validation`` and ``targets`` are (U,). Returns ``{name: metrics}``
    of :func:`evaluate_ranking`. EASE is left out above
    :data:`rayrec.evaluation.baselines.EASE_BASELINE_MAX_ITEMS` items (its weights are N x N),
    and ``log`` says so.
    """
    from rayrec.evaluation.baselines import (
        EASE_BASELINE_MAX_ITEMS,
        ItemKNNBaseline,
        PopularityBaseline,
        fit_ease_tuned,
    )

    def ranked(baseline) -> dict[str, float]:
        return evaluate_ranking(lambda users: baseline.score_histories([histories[u] for u in users]),
                                histories, targets, num_items)

    results = {"popularity": ranked(PopularityBaseline().fit(train, num_items))}
    if num_items <= EASE_BASELINE_MAX_ITEMS:
        ease, l2 = fit_ease_tuned(train, validation, num_items)
        results[f"EASE (λ={l2:g})"] = ranked(ease)
    else:
        log(f"baselines: EASE left out, {num_items:,} items is above its {EASE_BASELINE_MAX_ITEMS:,} "
            f"(its item-item weights are N x N)")
    results["item-kNN"] = ranked(ItemKNNBaseline().fit(train, num_items))
    return results
