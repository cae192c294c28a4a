"""Which item each index row holds, and each item's live row, without copying the model's
vocabulary.

The trained rows are the model's item vocabulary in its order, so their ids and rows are read
from it; only the rows added later (``PUT /items``) and the ids whose latest row is one of those
are kept here. A scorer replica used to build its own list, dict and set of every item id on top
of the vocabulary's: at a million items that is about 100 MB more per replica
(benchmarks/replica_memory.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from itertools import chain
from typing import Any

from rayrec.schema import Vocabulary

__all__ = ["ItemRows", "RowOf", "TrainedItems", "item_vocabulary"]


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
