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
from rayrec.models.attribution import EXPLAINED_TOP_K
from rayrec.models.order_free import OrderFreeModel
from rayrec.models.servable import COMMON_FILES, ModelFiles

MODEL_KIND = "als"
REQUIRED_FILES = (*COMMON_FILES, "item_factors.npy")


class ALSModel(OrderFreeModel):
    """Item factors ``(N, D)`` and the ALS fold-in that turns a history into a user vector."""

    def __init__(self, files: ModelFiles, params: ALSParams, category_factors: np.ndarray | None = None) -> None:
        super().__init__(files, category_factors)
        self.params = params
        self.item_factors = files.item_embeddings
        self._gram = item_gram(self.item_factors)  # Y^T Y, the same for every fold-in

    @classmethod
    def load(cls, model_dir: str | Path) -> "ALSModel":
        """Load and check an ALS model directory; a clear :class:`ModelError` if anything is off."""
        files, category_factors = cls.read_files(model_dir, REQUIRED_FILES)
        model_dir = files.model_dir
        try:
            params = ALSParams(**files.config["als_params"])
            item_factors = np.load(model_dir / "item_factors.npy").astype(np.float32)
        except Exception as exc:  # corrupt or truncated files, or a config.json without the ALS keys
            raise ModelError(f"{model_dir}: cannot read model files ({type(exc).__name__}: {exc})") from None
        if item_factors.shape != files.item_embeddings.shape or not np.array_equal(item_factors, files.item_embeddings):
            raise ModelError(f"{model_dir}: item_factors.npy {item_factors.shape} and item_embeddings.npy "
                             f"{files.item_embeddings.shape} must hold the same vectors; re-export the model")
        if item_factors.shape[1] != params.factors:
            raise ModelError(f"{model_dir}: item_factors.npy has {item_factors.shape[1]} factors but config.json's "
                             f"als_params.factors is {params.factors}")
        return cls(files, params, category_factors)

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
