"""The input form of every user tower: recent items, left-padded into a fixed width."""

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
