"""What the order-free model kinds share: a user vector made from the whole current history
(which items, not in which order), new items placed by their categories, and no
calibration of new items' scores.

:class:`rayrec.models.als_model.ALSModel` and :class:`rayrec.models.ease_model.EASEModel`
are such kinds; each adds how a history becomes a user vector (``encode_histories``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rayrec.errors import ModelError
from rayrec.models.servable import ModelFiles, ServableModel, read_model_files

#: (C, D) per category of config.json's category_vocab the mean vector of its items.
CATEGORY_VECTORS_FILE = "category_factors.npy"


def category_mean_vectors(item_vectors: np.ndarray, category_ids: np.ndarray | None, num_categories: int
                          ) -> np.ndarray | None:
    """(C, D): per category the mean vector of its items, the cold-start vector of a new item
    in it; None without categories. ``item_vectors: (N, D)``; ``category_ids``: (N + 1, W)
    1-based codes, 0 = none (row 0 is padding), as in :class:`rayrec.models.factory.ItemInputs`.
    A category without items gets the mean item vector."""
    if category_ids is None or num_categories == 0:
        return None
    codes = category_ids[1:]
    items, slots = np.nonzero(codes)
    # (C, N) how often each category lists each item, so one matrix product sums the vectors:
    # gathering and adding whole rows (np.add.at) is slow when they are N wide, as EASE's are.
    membership = np.zeros((num_categories, len(item_vectors)), dtype=np.float32)
    np.add.at(membership, (codes[items, slots] - 1, items), 1.0)
    sums = (membership @ np.asarray(item_vectors, dtype=np.float32)).astype(np.float64)
    counts = membership.sum(axis=1, dtype=np.float64)
    table = np.repeat(item_vectors.mean(axis=0, keepdims=True), num_categories, axis=0).astype(np.float64)
    table[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    return table.astype(np.float32)


def read_category_vectors(files: ModelFiles) -> np.ndarray | None:
    """``category_factors.npy`` of a model directory, (C, D), checked against config.json's
    category_vocab; None when the model has none; a :class:`ModelError` when it is damaged."""
    path = files.model_dir / CATEGORY_VECTORS_FILE
    if not path.exists():
        return None
    try:
        table = np.load(path).astype(np.float32)
    except Exception as exc:  # corrupt or truncated
        raise ModelError(f"{files.model_dir}: cannot read {path.name} ({type(exc).__name__}: {exc})") from None
    expected = (len(files.config.get("category_vocab", [])), files.item_embeddings.shape[1])
    if table.shape != expected:
        raise ModelError(f"{files.model_dir}: {path.name} has shape {table.shape}, expected {expected} for "
                         f"config.json's category_vocab")
    return table


def category_vector(table: np.ndarray | None, category_rows: Sequence[int]) -> np.ndarray | None:
    """A new item's vector from its categories: the mean of their rows of ``table``, or None
    when there is no table or no known category."""
    if table is None or not len(category_rows):
        return None
    return table[list(category_rows)].mean(axis=0)


class OrderFreeModel(ServableModel):
    """A servable model whose user vector is computed from the current history at request
    time, so feedback changes the next answer without retraining.

    ``category_vectors: (C, D)``: the vector of an item added later in category c (the mean of
    that category's trained item vectors), or None when the data had no categories.
    """

    def __init__(self, files: ModelFiles, category_vectors: np.ndarray | None) -> None:
        super().__init__(files.model_dir, files.config, files.user_vocab, files.item_vocab, files.item_embeddings,
                         files.item_popularity, files.histories, files.items)
        self.max_history = int(files.config["max_history"])
        self.category_vectors = category_vectors
        self._category_index = {name: i for i, name in enumerate(files.config.get("category_vocab", []))}

    @staticmethod
    def read_files(model_dir: str | Path, required: Sequence[str]) -> tuple[ModelFiles, np.ndarray | None]:
        """The shared files of an order-free model directory and its category table (None when
        it has none), checked against config.json; a :class:`ModelError` naming the problem."""
        files = read_model_files(model_dir, required)
        model_dir = files.model_dir
        try:
            int(files.config["max_history"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{model_dir}: config.json has no usable max_history; re-export the model") from None
        return files, read_category_vectors(files)

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        """(M, D) vectors for items added after training: the mean of the vectors of their known
        categories' items when the model stored that table, else the mean item vector. Either
        way a newcomer scores, for each user, like the average trained item (of its categories)."""
        vectors = np.repeat(self.mean_item_vector()[None, :], len(records), axis=0)
        if self.category_vectors is None:
            return vectors
        for row, record in enumerate(records):
            known = [self._category_index[c] for c in record.get("categories") or [] if c in self._category_index]
            vector = category_vector(self.category_vectors, known)
            if vector is not None:
                vectors[row] = vector
        return vectors

    def new_item_calibration(self, boost: float = 0.0) -> None:
        """None: new items' scores are used as they are (their vectors live in the trained
        items' space already)."""
        return None
