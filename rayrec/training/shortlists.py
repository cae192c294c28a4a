"""Each candidate's validation shortlists, and the blend of two candidates they let us choose.

A selection trial writes, next to its model, the validation-time model's best
``SHORTLIST_SIZE`` items per validation user (history masked, scores kept):
``.validation_shortlists.npz``. The models that are exported have also learnt the validation
items (their final fit), so they cannot be scored on validation again; the shortlists are
what validation saw. They are small (users x 200), whatever the catalogue.

From two candidates' shortlists :func:`best_blend` finds the weight ``w`` for which
``score_a + w * score_b`` ranks the validation items best. An item outside a shortlist gets
that user's lowest shortlisted score from that candidate: an approximation that only moves
items the candidate ranks below its 200th, which hardly ever reach a top 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rayrec.evaluation.metrics import hit_rate_at_k, mask_history, ndcg_at_k, target_ranks, top_k

SHORTLISTS_FILE = ".validation_shortlists.npz"
SHORTLIST_SIZE = 200
#: Weights tried for the second model, relative to the ratio of the two models' score spreads.
BLEND_WEIGHTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
#: A blend replaces the best single model only when it beats it on validation by this much
#: (relative): below, the difference is within what another seed would give.
MIN_RELATIVE_GAIN = 0.02


@dataclass
class Shortlists:
    """``users: (U,)`` 0-based validation users; ``items``, ``scores: (U, K)`` best first;
    ``targets: (U,)`` their held-out 0-based items."""

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    targets: np.ndarray

    def save(self, directory: str | Path) -> None:
        np.savez(Path(directory) / SHORTLISTS_FILE, users=self.users, items=self.items, scores=self.scores,
                 targets=self.targets)

    @classmethod
    def load(cls, directory: str | Path) -> "Shortlists | None":
        path = Path(directory) / SHORTLISTS_FILE
        if not path.exists():
            return None
        with np.load(path) as packed:
            return cls(packed["users"], packed["items"], packed["scores"], packed["targets"])


def write_shortlists(directory: str | Path, score_users: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
                     histories: Sequence[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> None:
    """Score every validation user's history (0-based ``histories``; ``targets`` -1 for none)
    with ``score_users`` ((B,) user indices, their B histories -> (B, N)) and save the shortlists."""
    users = np.flatnonzero(np.asarray(targets) >= 0)
    items, scores = [], []
    for start in range(0, len(users), batch_size):
        rows = users[start: start + batch_size]
        batch = [np.asarray(histories[u], dtype=np.int64) for u in rows]
        batch_scores = np.asarray(score_users(rows, batch), dtype=np.float32)
        mask_history(batch_scores, batch)
        best = top_k(batch_scores, min(SHORTLIST_SIZE, batch_scores.shape[1]))
        items.append(best)
        scores.append(np.take_along_axis(batch_scores, best, axis=1))
    width = min(SHORTLIST_SIZE, max((s.shape[1] for s in scores), default=0))
    Shortlists(users.astype(np.int64),
               np.concatenate(items) if items else np.zeros((0, width), np.int64),
               np.concatenate(scores) if scores else np.zeros((0, width), np.float32),
               np.asarray(targets, dtype=np.int64)[users]).save(directory)


@dataclass
class Blend:
    weight: float  # of the second model's scores
    val_ndcg: float
    val_hr: float


def _dense(shortlists: Shortlists, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(len(rows), len(columns)) scores over the union ``columns`` of items; items outside a
    user's shortlist get its lowest shortlisted score."""
    position = {item: j for j, item in enumerate(columns.tolist())}
    items, scores = shortlists.items[rows], shortlists.scores[rows]
    finite = np.where(np.isfinite(scores), scores, np.nan)
    floor = np.nan_to_num(np.nanmin(finite, axis=1, initial=np.inf), posinf=0.0)
    dense = np.repeat(floor[:, None], len(columns), axis=1).astype(np.float32)
    for row in range(len(rows)):
        keep = np.isfinite(scores[row])
        dense[row, [position[i] for i in items[row][keep].tolist()]] = scores[row][keep]
    return dense


def best_blend(first: Shortlists, second: Shortlists, k: int = 10) -> Blend | None:
    """The weight of ``second`` that maximises validation NDCG@k of ``first + w * second``
    over the users both have; None without common users."""
    common, first_rows, second_rows = np.intersect1d(first.users, second.users, return_indices=True)
    if len(common) == 0 or not np.array_equal(first.targets[first_rows], second.targets[second_rows]):
        return None
    spread = float(np.nanstd(np.where(np.isfinite(first.scores), first.scores, np.nan)))
    spread_second = float(np.nanstd(np.where(np.isfinite(second.scores), second.scores, np.nan)))
    scale = spread / spread_second if spread_second > 0 else 1.0
    sums = {w: [0.0, 0.0] for w in BLEND_WEIGHTS}
    for start in range(0, len(common), 256):
        a_rows, b_rows = first_rows[start: start + 256], second_rows[start: start + 256]
        columns = np.union1d(first.items[a_rows].ravel(), second.items[b_rows].ravel())
        a, b = _dense(first, a_rows, columns), _dense(second, b_rows, columns)
        targets = first.targets[a_rows]
        # A target outside both shortlists is not among the columns: a miss for every weight.
        target_columns = np.searchsorted(columns, targets)
        found = (target_columns < len(columns)) & (columns[np.minimum(target_columns, len(columns) - 1)] == targets)
        for w in BLEND_WEIGHTS:
            blended = a + (w * scale) * b
            ranks = np.full(len(targets), k, dtype=np.int64)
            if found.any():
                ranks[found] = target_ranks(blended[found], target_columns[found])
            sums[w][0] += float(ndcg_at_k(ranks, k).sum())
            sums[w][1] += float(hit_rate_at_k(ranks, k).sum())
    best = max(BLEND_WEIGHTS, key=lambda w: (sums[w][0], -w))
    return Blend(weight=best * scale, val_ndcg=sums[best][0] / len(common), val_hr=sums[best][1] / len(common))


def shortlist_ndcg(shortlists: Shortlists, k: int = 10) -> float:
    """NDCG@k of the shortlists alone (equals the candidate's validation NDCG@k)."""
    ranks = np.full(len(shortlists.users), k, dtype=np.int64)
    hits = shortlists.items[:, :k] == shortlists.targets[:, None]
    found = hits.any(axis=1)
    ranks[found] = hits[found].argmax(axis=1)
    return float(ndcg_at_k(ranks, k).mean()) if len(ranks) else 0.0


__all__ = ["BLEND_WEIGHTS", "Blend", "MIN_RELATIVE_GAIN", "SHORTLISTS_FILE", "Shortlists", "best_blend",
           "shortlist_ndcg", "write_shortlists"]
