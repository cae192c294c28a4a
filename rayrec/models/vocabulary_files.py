"""A model directory's user vocabulary as memory-mapped arrays, shared by a node's replicas.

``user_vocab.json`` loads as a Python list and dict: about 120 MB per process at a million
users, held privately by every serving replica and batch actor that loads the model. Export
also writes it as three ``.npy`` arrays of fixed-width UTF-8 bytes (``user_vocab.ids.npy`` in
index order, ``user_vocab.sorted.npy`` sorted, ``user_vocab.rows.npy`` each sorted id's index),
which :class:`MappedVocabulary` maps read-only: the pages are the kernel's page cache, shared
between processes, and an id is found by binary search.

Users only: a request looks its user up once, but looks up every item of the history, the
seen items and the candidates, hundreds of ids, and a binary search called from Python costs
several microseconds where a dict costs a fraction of one. Item ids stay a dict, one per
replica (the scorer and preprocessor read the model's, rayrec.serving.stages.item_rows).

The JSON file stays the format of record (older readers, ``--init-from``, people); directories
without the arrays, or whose ids cannot be stored as fixed-width bytes, load the JSON as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from rayrec.schema import UNKNOWN_INDEX, Vocabulary

__all__ = ["MappedVocabulary", "read_vocabulary", "write_vocabulary"]

#: Ids longer than this (UTF-8 bytes) keep the vocabulary JSON-only: one long id would widen
#: every row of the fixed-width arrays to its length.
MAX_ID_BYTES = 256
SUFFIXES = ("ids", "sorted", "rows")


def _paths(model_dir: Path, name: str) -> dict[str, Path]:
    return {suffix: Path(model_dir) / f"{name}.{suffix}.npy" for suffix in SUFFIXES}


def write_vocabulary(vocabulary: Vocabulary, model_dir: str | Path, name: str) -> None:
    """``name.json`` and, where the ids allow, the three arrays :class:`MappedVocabulary` maps."""
    model_dir = Path(model_dir)
    vocabulary.save(model_dir / f"{name}.json")
    encoded = [item_id.encode("utf-8") for item_id in vocabulary.ids]
    # numpy's fixed-width bytes drop trailing NULs, and an empty id would be one: those stay JSON-only.
    if any(not raw or raw.endswith(b"\0") or len(raw) > MAX_ID_BYTES for raw in encoded):
        for path in _paths(model_dir, name).values():
            path.unlink(missing_ok=True)
        return
    ids = np.array(encoded, dtype=f"S{max((len(raw) for raw in encoded), default=1)}")
    rows = np.argsort(ids, kind="stable").astype(np.int64)
    paths = _paths(model_dir, name)
    np.save(paths["ids"], ids)
    np.save(paths["sorted"], ids[rows])
    np.save(paths["rows"], rows)


def read_vocabulary(model_dir: str | Path, name: str) -> Vocabulary:
    """The memory-mapped vocabulary where export wrote its arrays, else ``name.json`` loaded."""
    paths = _paths(Path(model_dir), name)
    if all(path.exists() for path in paths.values()):
        return MappedVocabulary(*(np.load(paths[suffix], mmap_mode="r") for suffix in SUFFIXES))
    return Vocabulary.load(Path(model_dir) / f"{name}.json")


class MappedIds(Sequence[str]):
    """A :class:`MappedVocabulary`'s ids in index order, decoded as they are read; equal to a
    list of the same ids."""

    def __init__(self, ids: np.ndarray, vocabulary: "MappedVocabulary") -> None:
        self._ids = ids
        self._vocabulary = vocabulary

    def __contains__(self, value: object) -> bool:  # a binary search, not Sequence's scan
        return value in self._vocabulary

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [raw.decode("utf-8") for raw in self._ids[index].tolist()]
        return bytes(self._ids[index]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._ids), 65_536):
            yield from self[start: start + 65_536]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MappedIds):
            return len(self) == len(other) and bool(np.array_equal(self._ids, other._ids))
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"MappedIds({len(self)} ids)"


class MappedVocabulary(Vocabulary):
    """A read-only :class:`Vocabulary` over memory-mapped arrays (see the module docstring):
    ``index_of`` is a binary search over the sorted ids, ``decode`` reads rows."""

    def __init__(self, ids: np.ndarray, sorted_ids: np.ndarray, rows: np.ndarray) -> None:
        if not (len(ids) == len(sorted_ids) == len(rows)):
            raise ValueError(f"vocabulary arrays disagree in length: {len(ids)}, {len(sorted_ids)}, {len(rows)}")
        self._array = ids
        self._sorted = sorted_ids
        self._rows = rows
        self._width = ids.dtype.itemsize
        self._view = MappedIds(ids, self)

    def add(self, value: str) -> int:
        index = self.index_of(value)
        if index is None:
            raise TypeError("a model directory's vocabulary is read-only: Vocabulary(vocab.ids) makes one to extend")
        return index

    def __len__(self) -> int:
        return len(self._array)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self.index_of(value) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    @property
    def ids(self) -> MappedIds:
        return self._view

    def index_of(self, value: str) -> int | None:
        raw = value.encode("utf-8") if isinstance(value, str) else None
        # A longer key would be cut to the arrays' width by the comparison, and match a prefix.
        if not raw or len(raw) > self._width or raw.endswith(b"\0"):
            return None
        position = int(np.searchsorted(self._sorted, raw))
        if position < len(self._sorted) and bytes(self._sorted[position]) == raw:
            return int(self._rows[position])
        return None

    def encode(self, values: Iterable[str], unknown: str = "raise") -> np.ndarray:
        """Indices of ``values`` as int64, one binary search for all of them; unseen ids raise
        ``KeyError`` or map to -1."""
        raw = [value.encode("utf-8") if isinstance(value, str) else b"" for value in values]
        if not raw:
            return np.zeros(0, dtype=np.int64)
        storable = np.array([0 < len(r) <= self._width and not r.endswith(b"\0") for r in raw])
        keys = np.array([r if ok else b"" for r, ok in zip(raw, storable)], dtype=f"S{self._width}")
        found = np.full(len(keys), UNKNOWN_INDEX, dtype=np.int64)
        if len(self._sorted):
            positions = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
            hit = storable & (self._sorted[positions] == keys)
            found[hit] = self._rows[positions[hit]]
        if unknown == "raise" and (found == UNKNOWN_INDEX).any():
            missing = raw[int(np.flatnonzero(found == UNKNOWN_INDEX)[0])].decode("utf-8", "replace")
            raise KeyError(f"unknown id {missing!r} (not in the vocabulary of {len(self)} ids)")
        return found

    def decode(self, indices: Iterable[int]) -> list[str]:
        rows = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        return [raw.decode("utf-8") for raw in self._array[rows].tolist()] if len(rows) else []

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(list(self._view)))
