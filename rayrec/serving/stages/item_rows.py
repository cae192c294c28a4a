"""Which item each index row holds, and each item's live row, without copying the model's
vocabulary.

The trained rows are the model's item vocabulary in its order, so their ids and rows are read
from it; only the rows added later (``PUT /items``) and the ids whose latest row is one of those
are kept here. A scorer replica used to build its own list, dict and set of every item id on top
of the vocabulary's: at a million items that is about 100 MB more per replica
(benchmarks/replica_memory.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence, Set
from itertools import chain
from typing import Any

import numpy as np

from rayrec.models.item_records import ItemRecordsById, record_matches
from rayrec.schema import Vocabulary

__all__ = ["CatalogRecords", "ItemRows", "RowOf", "TrainedItems", "item_vocabulary"]


def item_vocabulary(model: Any) -> Vocabulary:
    """The model's item vocabulary (a model directory's ``item_vocab``), or one built from its
    ``item_ids`` for a model that has no vocabulary (a plugin's, a test's)."""
    vocabulary = getattr(model, "item_vocab", None)
    return vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary(model.item_ids)


class ItemRows(Sequence[str]):
    """Item id by row: the trained rows from the vocabulary, then the rows added later."""

    def __init__(self, trained: Vocabulary) -> None:
        self.trained = trained
        self.added: list[str] = []

    def __len__(self) -> int:
        return len(self.trained) + len(self.added)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        trained = self.trained.ids
        if row < 0:
            row += len(self)
        if 0 <= row < len(trained):
            return trained[row]
        if row < 0:
            raise IndexError(row)
        return self.added[row - len(trained)]

    def __iter__(self) -> Iterator[str]:
        return chain(self.trained.ids, self.added)

    def append(self, item_id: str) -> None:
        self.added.append(item_id)


class RowOf(Mapping[str, int]):
    """Each item id's latest row: an added row where the item was (re)added, else its trained row."""

    def __init__(self, trained: Vocabulary) -> None:
        self.trained = trained
        self._moved: dict[str, int] = {}  # ids whose latest row is an added one

    def get(self, item_id: str, default=None):
        row = self._moved.get(item_id)
        if row is not None:
            return row
        row = self.trained.index_of(item_id)
        return default if row is None else row

    def __getitem__(self, item_id: str) -> int:
        row = self.get(item_id)
        if row is None:
            raise KeyError(item_id)
        return row

    def __setitem__(self, item_id: str, row: int) -> None:
        self._moved[item_id] = row

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._moved or item_id in self.trained

    def __iter__(self) -> Iterator[str]:
        return chain(self.trained.ids, (i for i in self._moved if i not in self.trained))

    def __len__(self) -> int:
        return len(self.trained) + sum(1 for i in self._moved if i not in self.trained)


class TrainedItems(Set):
    """The ids the model was trained on (``CatalogView.trained_items``), read from its vocabulary;
    a read-only set (``in``, iteration, ``&``, ``|``, ``-``) that copies nothing."""

    def __init__(self, trained: Vocabulary) -> None:
        self.trained = trained

    @classmethod
    def _from_iterable(cls, items):  # what &, |, - return: a plain set
        return set(items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.trained

    def __iter__(self) -> Iterator[str]:
        return iter(self.trained.ids)

    def __len__(self) -> int:
        return len(self.trained)


class CatalogRecords(MutableMapping[str, dict]):
    """Item metadata by id as a scorer sees it: the model's records (for a model directory,
    :class:`~rayrec.models.item_records.ItemRecordsById`, read from a mapped file on demand) under
    the records the catalogue changed since (``PUT /items``), which are the only ones held here.
    A replica used to copy every record into a dict of its own: about 1 KB an item."""

    def __init__(self, model_records: Mapping[str, dict] | None = None) -> None:
        self.model_records: Mapping[str, dict] = model_records if model_records is not None else {}
        self.changed: dict[str, dict] = {}
        self._removed: set[str] = set()

    def __getitem__(self, item_id: str) -> dict:
        if item_id in self.changed:
            return self.changed[item_id]
        if item_id in self._removed:
            raise KeyError(item_id)
        return self.model_records[item_id]

    def __setitem__(self, item_id: str, record: dict) -> None:
        self.changed[item_id] = record
        self._removed.discard(item_id)

    def __delitem__(self, item_id: str) -> None:
        if item_id not in self:
            raise KeyError(item_id)
        self.changed.pop(item_id, None)
        if item_id in self.model_records:
            self._removed.add(item_id)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.changed or (item_id not in self._removed and item_id in self.model_records)

    def __iter__(self) -> Iterator[str]:
        hidden = self.changed.keys() | self._removed
        yield from (item_id for item_id in self.model_records if item_id not in hidden)
        yield from self.changed

    def __len__(self) -> int:
        hidden = sum(1 for item_id in self.changed.keys() | self._removed if item_id in self.model_records)
        return len(self.model_records) - hidden + len(self.changed)

    def attribute_names(self) -> set[str]:
        """Every attribute some record has, but ``item_id``: the names a request may filter on."""
        if isinstance(self.model_records, ItemRecordsById):
            names = set(self.model_records.attribute_names())
        else:
            names = {key for record in self.model_records.values() for key in record}
        names.update(key for record in self.changed.values() for key in record)
        return names - {"item_id"}

    def matching_mask(self, key: str, value: str, row_of: Mapping[str, int], num_rows: int) -> np.ndarray:
        """(num_rows,) bool: the index rows whose record passes the filter ``{key: value}``. A
        mapped model's matches are found once per filter (its rows are the index's trained rows);
        the changed records are checked each time, so they override the model's."""
        mask = np.zeros(num_rows, dtype=bool)
        if isinstance(self.model_records, ItemRecordsById):
            rows = self.model_records.matching_rows(key, value)
            mask[rows[rows < num_rows]] = True
            for item_id in self.changed.keys() | self._removed:  # these rows answer below, or not at all
                row = self.model_records.vocabulary.index_of(item_id)
                if row is not None and row < num_rows:
                    mask[row] = False
            overrides: Mapping[str, dict] = self.changed
        else:
            overrides = self
        for item_id, record in overrides.items():
            if record_matches(record, key, value):
                row = row_of.get(item_id)
                if row is not None:
                    mask[row] = True
        return mask
