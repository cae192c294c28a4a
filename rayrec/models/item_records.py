"""A model directory's item metadata (``items.jsonl``), read a record at a time from a memory map.

Loaded as Python dicts, the records cost every process that loads the model about 1 KB an item
with a title and a description: 970 MB at a million items, in each serving replica and batch
actor. Export also writes ``items.offsets.npy``, where each line of ``items.jsonl`` starts, in
the item vocabulary's order; :class:`ItemRecords` maps both read-only (the pages are the
kernel's page cache, shared by a node's processes) and parses a record when it is asked for,
keeping the most recently used ones. A model's ``items`` is then an :class:`ItemRecords`, a
sequence of records like the list it was; its ``by_id`` is what a scorer reads.

Directories without the offsets (older ones, the tests' ToyModel) load the records as a list,
as before.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rayrec.schema import Vocabulary

__all__ = ["ItemRecords", "ItemRecordsById", "read_item_records", "record_matches", "write_item_records"]

RECORDS_FILE = "items.jsonl"
OFFSETS_FILE = "items.offsets.npy"
#: Parsed records kept per process: a request reads the metadata of its candidates, which
#: repeat across requests (popular items), so a small cache saves most of the parsing.
CACHED_RECORDS = 16_384


def record_matches(record: Mapping[str, Any], key: str, value: str) -> bool:
    """Whether an item record passes the request filter ``{key: value}``: ``value`` is one of a
    list attribute's values, or equals a scalar one."""
    have = record.get(key)
    if have is None:
        return False
    return (value in have) if isinstance(have, (list, tuple, set)) else str(have) == value


def write_item_records(out_dir: str | Path, records: Iterable[dict], item_ids: Iterable[str]) -> None:
    """``items.jsonl``, one record per line, and, when the records are the vocabulary's items in
    its order (as training writes them), ``items.offsets.npy`` for :class:`ItemRecords`."""
    out_dir = Path(out_dir)
    offsets, aligned = [0], True
    expected = iter(item_ids)
    with open(out_dir / RECORDS_FILE, "wb") as handle:
        for record in records:
            line = (json.dumps(record) + "\n").encode("utf-8")
            handle.write(line)
            offsets.append(offsets[-1] + len(line))
            aligned = aligned and str(record.get("item_id")) == next(expected, None)
    aligned = aligned and next(expected, None) is None
    if aligned:
        np.save(out_dir / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
    else:
        (out_dir / OFFSETS_FILE).unlink(missing_ok=True)


def read_item_records(model_dir: str | Path, item_vocab: Vocabulary) -> "ItemRecords | list[dict] | None":
    """The mapped records where export wrote the offsets, else the rows of ``items.jsonl`` as a
    list; None without the file."""
    model_dir = Path(model_dir)
    path = model_dir / RECORDS_FILE
    if not path.exists():
        return None
    offsets_path = model_dir / OFFSETS_FILE
    if offsets_path.exists():
        offsets = np.load(offsets_path, mmap_mode="r")
        if len(offsets) == len(item_vocab) + 1 and int(offsets[-1]) == path.stat().st_size:
            return ItemRecords(path, offsets, item_vocab)
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


class ItemRecords(Sequence[dict]):
    """The records of ``items.jsonl`` in row order (the item vocabulary's), parsed from the
    mapped file when read (module docstring): what a model's ``items`` list held, without
    holding it. ``by_id`` looks them up by item id.

    Records returned are shared with a cache of the recent ones: read them, do not change them.
    """

    def __init__(self, path: Path, offsets: np.ndarray, vocabulary: Vocabulary) -> None:
        self.path = Path(path)
        self.offsets = offsets
        self.vocabulary = vocabulary
        self._open()

    def _open(self) -> None:
        with self.path.open("rb") as handle:
            # mmap cannot map an empty file; an empty catalogue has no line to read anyway.
            self._data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else b""
        self.record = lru_cache(maxsize=CACHED_RECORDS)(self._parse)
        self.by_id = ItemRecordsById(self)

    # An mmap does not pickle: a copy (a Ray task argument, a deep copy) maps the file again.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offsets": np.asarray(self.offsets), "vocabulary": self.vocabulary}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.offsets, self.vocabulary = state["path"], state["offsets"], state["vocabulary"]
        self._open()

    def _parse(self, row: int) -> dict:
        return json.loads(self._data[int(self.offsets[row]): int(self.offsets[row + 1])])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self._parse(r) for r in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self.record(row)

    def __iter__(self) -> Iterator[dict]:
        """Every record in row order, parsed without filling the cache (a whole-catalogue scan
        must not evict the requests' working set)."""
        for row in range(len(self)):
            yield self._parse(row)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"ItemRecords({len(self)} records in {self.path})"


class ItemRecordsById(Mapping[str, dict]):
    """:class:`ItemRecords` by item id (the vocabulary gives the row), iterated in row order;
    with the two questions a scorer's request filters ask of every record, answered once."""

    def __init__(self, records: ItemRecords) -> None:
        self.records = records
        self.vocabulary = records.vocabulary
        self._attribute_names: frozenset[str] | None = None
        self._matching: dict[tuple[str, str], np.ndarray] = {}

    def __getitem__(self, item_id: str) -> dict:
        row = self.vocabulary.index_of(item_id) if isinstance(item_id, str) else None
        if row is None:
            raise KeyError(item_id)
        return self.records[row]

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.vocabulary.index_of(item_id) is not None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[str]:
        return iter(self.vocabulary.ids)

    def attribute_names(self) -> frozenset[str]:
        """Every key any record has, but ``item_id`` (computed once: the file does not change)."""
        if self._attribute_names is None:
            self._attribute_names = frozenset(key for record in self.records for key in record) - {"item_id"}
        return self._attribute_names

    def matching_rows(self, key: str, value: str) -> np.ndarray:
        """(M,) int64: the rows whose record passes the filter ``{key: value}`` (computed once)."""
        rows = self._matching.get((key, value))
        if rows is None:
            rows = np.fromiter((row for row, record in enumerate(self.records) if record_matches(record, key, value)),
                               dtype=np.int64)
            self._matching[(key, value)] = rows
        return rows
