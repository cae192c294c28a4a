"""Explanations of order-free models: which history positions a user's top scores come from.

A model whose scores are a sum over the distinct items of the history (ALS fold-in, EASE)
computes each item's part in the scores it explains; :func:`position_shares` turns those
parts into the per-position weights serving's explanations read.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Attributions explain a user's this many best unseen items.
EXPLAINED_TOP_K = 10


def position_shares(history: Sequence[int], distinct: np.ndarray, counts: np.ndarray, parts: np.ndarray
                    ) -> np.ndarray:
    """Each history position's share of what the history explains: ``(len(history),)`` float32,
    summing to 1 (all zero when no item's part is positive).

    ``distinct``: the history's distinct items, ascending; ``counts``: how often each occurs;
    ``parts``: each one's non-negative part in the explained scores. An item that occurs n
    times gives each of its positions 1/n of its part.
    """
    total = float(parts.sum())
    if total <= 0:
        return np.zeros(len(history), dtype=np.float32)
    at = np.searchsorted(distinct, np.asarray(history, dtype=np.int64))
    return (parts[at] / counts[at] / total).astype(np.float32)
