"""Every training user's history, memory-mapped from the model directory.

Serving looks up one user's history per request, ``rayrec recommend`` a batch at a time;
neither needs all of them in memory. Two flat arrays hold them: ``history_items.npy`` (every
user's items, oldest first, one user after another; 0-based item indices) and
``history_offsets.npy`` (``(U + 1,)``: user u's items are ``items[offsets[u]:offsets[u + 1]]``).
Both are read memory-mapped, so the replicas of a node share one page-cache copy and a
replica's memory does not grow with the number of users (a list of one array per user
would cost about 100 bytes of Python object per user on top of the items).

Model directories written before these files hold ``histories.npz`` (lengths and items,
compressed); it is still read, into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

ITEMS_FILE = "history_items.npy"
OFFSETS_FILE = "history_offsets.npy"
LEGACY_FILE = "histories.npz"


class Histories(Sequence[np.ndarray]):
    """``histories[u]``: user u's items, ``(n_u,)`` int64 (a view where the file is int64)."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != len(items):
            raise ValueError(f"history offsets must run from 0 to the {len(items)} items; got {len(offsets)} offsets")
        self.items = items
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, user: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= user < len(self):
            raise IndexError(f"user index {user} out of range for {len(self)} users")
        user %= len(self)
        rows = self.items[int(self.offsets[user]): int(self.offsets[user + 1])]
        return rows if rows.dtype == np.int64 else rows.astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[u] for u in range(len(self)))

    def write(self, directory: str | Path) -> None:
        directory = Path(directory)
        np.save(directory / ITEMS_FILE, np.ascontiguousarray(self.items, dtype=np.int64))
        np.save(directory / OFFSETS_FILE, np.ascontiguousarray(self.offsets, dtype=np.int64))

    @staticmethod
    def present(directory: str | Path) -> bool:
        directory = Path(directory)
        return (directory / ITEMS_FILE).exists() and (directory / OFFSETS_FILE).exists() \
            or (directory / LEGACY_FILE).exists()

    @classmethod
    def read(cls, directory: str | Path) -> "Histories":
        """The histories of a model directory: memory-mapped, or from ``histories.npz``."""
        directory = Path(directory)
        if (directory / ITEMS_FILE).exists():
            return cls(np.load(directory / ITEMS_FILE, mmap_mode="r"), np.load(directory / OFFSETS_FILE))
        with np.load(directory / LEGACY_FILE) as packed:
            lengths, items = packed["lengths"], packed["items"]
        return cls(items.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
