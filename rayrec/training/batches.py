"""Turning per-user item sequences into padded next-item training batches."""

from __future__ import annotations

import numpy as np


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """Most recent ``length`` items of each sequence, left-padded with 0: -> (B, length) int64.

    Sequences hold 1-based item indices (0 is padding).
    """
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = sequence[-length:]
        if len(tail):
            out[row, length - len(tail):] = tail
    return out


def next_item_batch(sequences: list[np.ndarray], max_len: int, rng: np.random.Generator | None = None,
                    crop_probability: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item labels for every position: -> ((B, L), (B, L)), 0 = no label.

    With ``crop_probability`` a long sequence is, that often, cut at a random earlier point,
    so the model also learns from histories older than the last ``max_len`` items.
    """
    inputs, labels = [], []
    for sequence in sequences:
        end = len(sequence)
        if rng is not None and crop_probability and end > max_len + 1 and rng.random() < crop_probability:
            end = int(rng.integers(max_len + 1, end + 1))
        window = sequence[max(0, end - max_len - 1): end]
        inputs.append(window[:-1])
        labels.append(window[1:])
    length = max(1, min(max_len, max(len(s) for s in inputs)))
    return left_pad(inputs, length), left_pad(labels, length)
