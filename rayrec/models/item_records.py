"""A model directory's item metadata (``items.jsonl``), read a record at a time from a memory map.

Loaded as Python dicts, the records cost every process that loads the model about 1 KB an item
with a title and a description: 970 MB at a million items, in each serving replica and batch
actor. Export also writes ``items.offsets.npy``, where each line of ``items.jsonl`` starts, in
the item vocabulary's order; :class:`ItemRecords` maps both read-only (the pages are the
kernel's page cache, shared by a node's processes) and parses a record when it is asked for,
keeping the most recently used ones. A model's ``items`` is then an :class:`ItemRecords`, a
sequence of records like the list it was; its ``by_id`` is what a scorer reads.

Request filters (``{"categories": ["Comedy"]}``) ask which records match a value. Export answers
that once for every attribute with at most :data:`MAX_INDEXED_VALUES` distinct values
(categories, brands, languages; not titles): ``items.filters.json`` holds the attribute names and,
per attribute and value, a span of ``items.filter_rows.npy``, the matching rows, which serving
maps. Without it a filter's first use of each value parses every record: seconds at a million
items, on the request that asked (``benchmarks/filters.py``). Attributes not indexed are still
scanned, once per value.

Directories without the offsets (older ones, the tests' ToyModel) load the records as a list,
as before.
"""

from __future__ import annotations

import array
import json
import mmap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rayrec.schema import Vocabulary

__all__ = ["ItemRecords", "ItemRecordsById", "matching_values", "read_item_records", "record_matches",
           "write_item_records"]

RECORDS_FILE = "items.jsonl"
OFFSETS_FILE = "items.offsets.npy"
FILTERS_FILE = "items.filters.json"
FILTER_ROWS_FILE = "items.filter_rows.npy"
#: An attribute with more distinct values than this is not indexed at export (a title, a
#: description: nobody filters on them, and their index would be as big as the catalogue).
MAX_INDEXED_VALUES = 4_096
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


def matching_values(have: Any) -> Iterator[str]:
    """The filter values an attribute's value ``have`` matches, by :func:`record_matches`'s rule:
    a list's string elements, a scalar as a string, nothing for None."""
    if have is None:
        return
    if isinstance(have, (list, tuple, set)):
        yield from (element for element in have if isinstance(element, str))
    else:
        yield str(have)


class _FilterIndexBuilder:
    """The rows matching each value of each attribute, collected as export writes the records."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.rows: dict[str, dict[str, array.array] | None] = {}  # None: too many values to index

    def add(self, row: int, record: Mapping[str, Any]) -> None:
        for key, have in record.items():
            if key == "item_id":
                continue
            self.names.add(key)
            if key not in self.rows:
                self.rows[key] = {}
            values = self.rows[key]
            if values is None:
                continue
            for value in dict.fromkeys(matching_values(have)):  # a value listed twice is one match
                values.setdefault(value, array.array("q")).append(row)
            if len(values) > MAX_INDEXED_VALUES:
                self.rows[key] = None

    def write(self, out_dir: Path, records_bytes: int) -> None:
        spans: dict[str, dict[str, list[int]]] = {}
        parts, start = [], 0
        for key, values in self.rows.items():
            if values is None:
                continue
            spans[key] = {}
            for value, rows in values.items():
                spans[key][value] = [start, start + len(rows)]
                parts.append(np.frombuffer(rows, dtype=np.int64))
                start += len(rows)
        np.save(out_dir / FILTER_ROWS_FILE, np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        (out_dir / FILTERS_FILE).write_text(json.dumps(
            {"records_bytes": records_bytes, "attribute_names": sorted(self.names), "values": spans}))


def write_item_records(out_dir: str | Path, records: Iterable[dict], item_ids: Iterable[str]) -> None:
    """``items.jsonl``, one record per line, and, when the records are the vocabulary's items in
    its order (as training writes them), ``items.offsets.npy`` for :class:`ItemRecords` and the
    filter index (module docstring)."""
    out_dir = Path(out_dir)
    offsets, aligned = [0], True
    expected = iter(item_ids)
    filters = _FilterIndexBuilder()
    with open(out_dir / RECORDS_FILE, "wb") as handle:
        for row, record in enumerate(records):
            line = (json.dumps(record) + "\n").encode("utf-8")
            handle.write(line)
            offsets.append(offsets[-1] + len(line))
            aligned = aligned and str(record.get("item_id")) == next(expected, None)
            if aligned:
                filters.add(row, record)
    aligned = aligned and next(expected, None) is None
    if aligned:
        np.save(out_dir / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
        filters.write(out_dir, offsets[-1])
    else:
        for name in (OFFSETS_FILE, FILTERS_FILE, FILTER_ROWS_FILE):
            (out_dir / name).unlink(missing_ok=True)


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
        self._indexed: dict[str, dict[str, list[int]]] = {}
        self._indexed_rows = np.zeros(0, dtype=np.int64)
        self._read_filter_index()

    def _read_filter_index(self) -> None:
        """Export's filter index (module docstring), where it was written with these records."""
        directory = self.records.path.parent
        try:
            index = json.loads((directory / FILTERS_FILE).read_text())
            if index.get("records_bytes") != self.records.path.stat().st_size:
                return  # written for another items.jsonl
            rows = np.load(directory / FILTER_ROWS_FILE, mmap_mode="r")
        except (OSError, ValueError):  # none (an older directory) or unreadable: scan instead
            return
        self._attribute_names = frozenset(index["attribute_names"])
        self._indexed, self._indexed_rows = index["values"], rows

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
        """(M,) int64: the rows whose record passes the filter ``{key: value}``: read from export's
        filter index where it holds the attribute, else computed once by a scan."""
        if key in self._indexed:
            start, end = self._indexed[key].get(value, (0, 0))
            return np.asarray(self._indexed_rows[start:end])
        rows = self._matching.get((key, value))
        if rows is None:
            rows = np.fromiter((row for row, record in enumerate(self.records) if record_matches(record, key, value)),
                               dtype=np.int64)
            self._matching[(key, value)] = rows
        return rows
