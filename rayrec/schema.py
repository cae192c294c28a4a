"""Column names and the in-memory shapes of a dataset, shared by every layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
VALUE = "value"
TITLE = "title"
TEXT = "text"
DESCRIPTION = "description"
CATEGORIES = "categories"

INTERACTION_REQUIRED = (USER_ID, ITEM_ID, TIMESTAMP)
INTERACTION_OPTIONAL = (EVENT_TYPE, VALUE)

#: Returned by :meth:`Vocabulary.encode` for ids it has never seen (when not raising).
UNKNOWN_INDEX = -1


@dataclass
class Interactions:
    """User-item events as parallel columns, in file order.

    ``user_id``/``item_id``: (n,) object arrays of str; ``timestamp``: (n,) int64 unix seconds;
    ``event_type``: (n,) object array or None; ``value``: (n,) float32 or None.
    """

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    event_type: np.ndarray | None = None
    value: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, index: np.ndarray) -> "Interactions":
        """Rows at ``index`` (an int array or boolean mask), keeping their order."""
        return Interactions(
            user_id=self.user_id[index],
            item_id=self.item_id[index],
            timestamp=self.timestamp[index],
            event_type=None if self.event_type is None else self.event_type[index],
            value=None if self.value is None else self.value[index],
        )

    @classmethod
    def concat(cls, parts: Sequence["Interactions"]) -> "Interactions":
        has_event = all(p.event_type is not None for p in parts)
        has_value = all(p.value is not None for p in parts)
        return cls(
            user_id=np.concatenate([p.user_id for p in parts]),
            item_id=np.concatenate([p.item_id for p in parts]),
            timestamp=np.concatenate([p.timestamp for p in parts]),
            event_type=np.concatenate([p.event_type for p in parts]) if has_event else None,
            value=np.concatenate([p.value for p in parts]) if has_value else None,
        )


@dataclass
class Items:
    """Item metadata: ``item_id`` plus optional title, free text and categories per item."""

    item_id: list[str]
    title: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    categories: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.item_id)

    def record(self, position: int) -> dict:
        """The item at ``position`` as a plain dict (what feature extractors receive)."""
        return {
            ITEM_ID: self.item_id[position],
            TITLE: self.title[position] if self.title else "",
            TEXT: self.text[position] if self.text else "",
            CATEGORIES: self.categories[position] if self.categories else [],
        }

    def records(self) -> list[dict]:
        return [self.record(i) for i in range(len(self))]


def is_searchable(record: dict) -> bool:
    """Whether an item record has any text for ``POST /search`` to match (title, text,
    categories or tags): an empty string would match every query equally badly."""
    return any(record.get(name) for name in (TITLE, TEXT, CATEGORIES, "tags"))


@dataclass
class Users:
    """User metadata: ``user_id`` plus categorical features (column name -> values)."""

    user_id: list[str]
    features: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass
class LoadReport:
    """What preprocessing did to the input, so users see what was dropped and why."""

    rows_read: int = 0
    malformed_rows: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0
    below_threshold_dropped: int = 0
    kcore_dropped: int = 0
    events_ignored: int = 0  # event-log events of a type that is no interaction (skip, dislike)
    erased_dropped: int = 0  # rows of erased users, from every input
    disliked_dropped: int = 0  # rows of items their user later disliked, from every input

    def lines(self) -> list[str]:
        out = [f"read {self.rows_read:,} rows"]
        if self.malformed_rows:
            out.append(f"skipped {self.malformed_rows:,} malformed rows, e.g.:")
            out.extend(f"  {example}" for example in self.malformed_examples)
        if self.duplicates_dropped:
            out.append(f"dropped {self.duplicates_dropped:,} exact duplicate rows")
        if self.below_threshold_dropped:
            out.append(f"dropped {self.below_threshold_dropped:,} rows below the rating threshold")
        if self.kcore_dropped:
            out.append(f"dropped {self.kcore_dropped:,} rows by the k-core filter")
        if self.events_ignored:
            out.append(f"left out {self.events_ignored:,} logged events that are no interaction (skips, dislikes)")
        if self.erased_dropped:
            out.append(f"dropped {self.erased_dropped:,} rows of erased users")
        if self.disliked_dropped:
            out.append(f"dropped {self.disliked_dropped:,} rows of items their user disliked")
        return out

    def add(self, other: "LoadReport") -> None:
        """Count ``other`` in too (several inputs read into one dataset)."""
        for name, value in vars(other).items():
            if name == "malformed_examples":
                self.malformed_examples.extend(value)
            else:
                setattr(self, name, getattr(self, name) + value)


@dataclass
class Dataset:
    """Everything a data source loads from one path."""

    name: str
    interactions: Interactions
    items: Items | None = None
    users: Users | None = None
    report: LoadReport = field(default_factory=LoadReport)
    #: Users erased where this data came from (a state store's ``DELETE /users/{id}``):
    #: :func:`rayrec.data.load_datasets` drops their rows from every input, this one included.
    erased_users: frozenset[str] = frozenset()
    #: (user_id, item_id) pairs the user disliked: dropped from every input the same way, as
    #: serving drops a disliked item from the user's sequence for good.
    disliked: frozenset[tuple[str, str]] = frozenset()


class Vocabulary:
    """A stable mapping between opaque string ids and contiguous indices ``0..n-1``.

    Order is first appearance, so the same input gives the same indices. Saved with a model,
    so serving maps ids exactly as training did. Unseen ids are handled explicitly: ``encode``
    raises by default, or returns :data:`UNKNOWN_INDEX` with ``unknown="mark"``.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for value in ids:
            self.add(value)

    @classmethod
    def of(cls, ids: "Vocabulary | Iterable[str]") -> "Vocabulary":
        """``ids`` itself when it is a vocabulary already, else a vocabulary of them."""
        return ids if isinstance(ids, Vocabulary) else cls(ids)

    def add(self, value: str) -> int:
        value = str(value)
        index = self._index.get(value)
        if index is None:
            index = len(self._ids)
            self._ids.append(value)
            self._index[value] = index
        return index

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    def __iter__(self):
        return iter(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def index_of(self, value: str) -> int | None:
        return self._index.get(value)

    def encode(self, values: Iterable[str], unknown: str = "raise") -> np.ndarray:
        """Indices of ``values`` as int64; unseen ids raise ``KeyError`` or map to -1."""
        index = self._index
        if unknown == "raise":
            try:
                return np.fromiter((index[v] for v in values), dtype=np.int64)
            except KeyError as exc:
                raise KeyError(f"unknown id {exc.args[0]!r} (not in the vocabulary of {len(self)} ids)") from None
        return np.fromiter((index.get(v, UNKNOWN_INDEX) for v in values), dtype=np.int64)

    def decode(self, indices: Iterable[int]) -> list[str]:
        ids = self._ids
        return [ids[i] for i in indices]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self._ids))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls(json.loads(Path(path).read_text()))
