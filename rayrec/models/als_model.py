"""A servable implicit-feedback ALS model: user vectors by exact fold-in of the current history.

Loaded from a model directory with ``"model_kind": "als"`` (written by
:func:`rayrec.training.export_als.export_als_model_dir`; layout in :mod:`rayrec.models.bundle`).
There is no user tower: a user's vector is the ALS least-squares solution for whatever
history serving hands it (training history plus fresh feedback), so a click changes the next
answer at once, and the order of the history does not matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rayrec.errors import ModelError
from rayrec.models.als import ALSParams, fold_in, fold_in_with_contributions, item_gram
from rayrec.models.servable import COMMON_FILES, ServableModel, read_model_files
from rayrec.schema import Vocabulary

MODEL_KIND = "als"
REQUIRED_FILES = (*COMMON_FILES, "item_factors.npy")
#: Attributions explain a user's this many best unseen items.
EXPLAINED_TOP_K = 10


class ALSModel(ServableModel):
    """Item factors ``(N, D)`` and the ALS fold-in that turns a history into a user vector."""

    def __init__(self, model_dir: Path, config: dict, user_vocab: Vocabulary, item_vocab: Vocabulary,
                 item_factors: np.ndarray, item_popularity: np.ndarray, histories: list[np.ndarray],
                 items: list[dict] | None, params: ALSParams, category_factors: np.ndarray | None = None) -> None:
        super().__init__(model_dir, config, user_vocab, item_vocab, item_factors, item_popularity, histories, items)
        self.params = params
        self.item_factors = item_factors
        self.max_history = int(config["max_history"])
        #: (C, D) mean factor of the items of each category of config["category_vocab"], or None
        self.category_factors = category_factors
        self._category_index = {name: i for i, name in enumerate(config.get("category_vocab", []))}
        self._gram = item_gram(item_factors)  # Y^T Y, the same for every fold-in

    @classmethod
    def load(cls, model_dir: str | Path) -> "ALSModel":
        """Load and check an ALS model directory; a clear :class:`ModelError` if anything is off."""
        model_dir = Path(model_dir)
        files = read_model_files(model_dir, REQUIRED_FILES)
        config = files.config
        try:
            params = ALSParams(**config["als_params"])
            int(config["max_history"])
            item_factors = np.load(model_dir / "item_factors.npy").astype(np.float32)
            category_factors = None
            if (model_dir / "category_factors.npy").exists():
                category_factors = np.load(model_dir / "category_factors.npy").astype(np.float32)
        except Exception as exc:  # corrupt or truncated files, or a config.json without the ALS keys
            raise ModelError(f"{model_dir}: cannot read model files ({type(exc).__name__}: {exc})") from None
        if item_factors.shape != files.item_embeddings.shape or not np.array_equal(item_factors, files.item_embeddings):
            raise ModelError(f"{model_dir}: item_factors.npy {item_factors.shape} and item_embeddings.npy "
                             f"{files.item_embeddings.shape} must hold the same vectors; re-export the model")
        if item_factors.shape[1] != params.factors:
            raise ModelError(f"{model_dir}: item_factors.npy has {item_factors.shape[1]} factors but config.json's "
                             f"als_params.factors is {params.factors}")
        categories = len(config.get("category_vocab", []))
        if category_factors is not None and category_factors.shape != (categories, params.factors):
            raise ModelError(f"{model_dir}: category_factors.npy has shape {category_factors.shape}, expected "
                             f"({categories}, {params.factors}) for config.json's category_vocab")
        return cls(model_dir, config, files.user_vocab, files.item_vocab, item_factors, files.item_popularity,
                   files.histories, files.items, params, category_factors)

    # -- the RecommenderModel protocol -------------------------------------------------------
    def encode_histories(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, D) fold-in user vectors and, per user, each history position's share of the
        user's top unseen scores (``(len(history),)``, summing to 1; see
        :func:`rayrec.models.als.fold_in_with_contributions`).

        ``histories`` hold 0-based item indices, in any order: only which items and how often
        count. ``user_indices`` is accepted for the common interface and not needed.
        """
        return fold_in_with_contributions(self.item_factors, histories, self.params, EXPLAINED_TOP_K, self._gram)

    def user_vectors(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                     ) -> np.ndarray:
        """(B, D) fold-in user vectors without attributions (batch top-K, evaluation)."""
        return fold_in(self.item_factors, histories, self.params, self._gram)

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        """(M, D) vectors for items added after training: the mean of the factors of their known
        categories' items when the model stored that table, else the mean item vector (a
        neutral newcomer that scores like the average item)."""
        neutral = self.item_factors.mean(axis=0) if len(self.item_factors) else np.zeros(self.params.factors)
        vectors = np.repeat(neutral[None, :].astype(np.float32), len(records), axis=0)
        if self.category_factors is None:
            return vectors
        for row, record in enumerate(records):
            known = [self._category_index[c] for c in record.get("categories") or [] if c in self._category_index]
            if known:
                vectors[row] = self.category_factors[known].mean(axis=0)
        return vectors

    def new_item_calibration(self, boost: float = 0.0) -> None:
        """None: new items' scores are used as they are (their vectors live in the trained
        items' space already)."""
        return None
