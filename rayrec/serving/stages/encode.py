"""The user-encoding stage: the user tower over the current sequence, batched."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rayrec.models.bundle import RecommenderModel


class HistoryEncoderLogic:
    """Encodes a batch of histories with the model's user tower.

    ``histories``: B sequences of item indices (oldest first) -> user vectors ``(B, D)`` and,
    per user, one attribution weight per history position (for explanations). Empty
    histories give no vector (``None``): the scorer falls back to popular items.
    """

    def __init__(self, model: RecommenderModel) -> None:
        self.model = model

    def encode(self, histories: Sequence[Sequence[int]]) -> list[tuple[np.ndarray | None, np.ndarray]]:
        results: list[tuple[np.ndarray | None, np.ndarray]] = [
            (None, np.zeros(0, dtype=np.float32)) for _ in histories
        ]
        todo = [b for b, history in enumerate(histories) if len(history)]
        if not todo:
            return results
        vectors, attributions = self.model.encode_histories([list(histories[b]) for b in todo])
        vectors = np.asarray(vectors, dtype=np.float32)
        for j, b in enumerate(todo):
            results[b] = (vectors[j], np.asarray(attributions[j], dtype=np.float32))
        return results
