"""A blend of two servable models: ``score = score_a + w * score_b``, as one vector model.

Model selection (:mod:`rayrec.training.selection`) blends its best sequential candidate
with its best order-free one when that ranks the validation items better: the sequential
model knows what comes next, the order-free one everything the user ever had, and on
MovieLens the two together beat either.

A sum of two inner products is one inner product of concatenated vectors, so the blend fits
serving's vector interface unchanged: the user vector is ``[u_a, u_b]`` and each item vector
``[v_a, w * v_b]`` (the weight lives on the item side, ``item_embeddings.npy``). Serving,
``rayrec recommend``, real-time feedback (each part encodes the fresh history) and new items
(each part encodes the item's content) work as for any model.

Layout: the files every model directory has (``item_embeddings.npy`` holding the weighted,
concatenated item vectors) and ``parts/<name>/``, each a complete model directory of its
own; ``config.json`` has ``"model_kind": "blend"`` and ``blend.parts``: ``[{"dir", "weight"}]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rayrec.errors import ModelError
from rayrec.models.item_records import ItemRecords
from rayrec.models.new_items import NewItemCalibration
from rayrec.models.servable import COMMON_FILES, ServableModel, read_model_files

MODEL_KIND = "blend"


class BlendModel(ServableModel):
    """``parts``: the models and their weights, the first one's weight 1; every part has the
    blend's item and user vocabularies."""

    def __init__(self, files, parts: list[tuple[ServableModel, float]]) -> None:
        super().__init__(files.model_dir, files.config, files.user_vocab, files.item_vocab, files.item_embeddings,
                         files.item_popularity, files.histories, files.items)
        self.parts = parts
        self.max_history = max(int(part.max_history) for part, _ in parts)
        self._calibration: NewItemCalibration | None = None

    @classmethod
    def load(cls, model_dir: str | Path) -> "BlendModel":
        from rayrec.models.servable import load_model_dir

        files = read_model_files(model_dir, COMMON_FILES)
        specs = (files.config.get("blend") or {}).get("parts") or []
        if len(specs) < 2:
            raise ModelError(f"{files.model_dir}: config.json's blend.parts must name at least two parts")
        parts = []
        for spec in specs:
            part = load_model_dir(files.model_dir / spec["dir"])
            if part.item_ids != files.item_vocab.ids or len(part.user_vocab) != len(files.user_vocab):
                raise ModelError(f"{files.model_dir / spec['dir']}: its items or users differ from the blend's")
            parts.append((part, float(spec["weight"])))
        width = sum(part.item_embeddings.shape[1] for part, _ in parts)
        if files.item_embeddings.shape[1] != width:
            raise ModelError(f"{files.model_dir}: item_embeddings.npy has {files.item_embeddings.shape[1]} columns, "
                             f"its parts {width}")
        return cls(files, parts)

    @property
    def content_part(self) -> ServableModel:
        """The part that holds the item content (the sequential, possibly content-aware model is
        always the first; order-free parts have none): text search reads its content buffer and
        the text graph saved with it."""
        return self.parts[0][0]

    @property
    def network(self):
        """The content part's network, where it has one."""
        return getattr(self.content_part, "network", None)

    # -- the RecommenderModel protocol -------------------------------------------------------
    def user_vectors(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                     ) -> np.ndarray:
        return np.concatenate([part.user_vectors(histories, user_indices) for part, _ in self.parts], axis=1)

    def encode_histories(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Concatenated user vectors; the attributions are the first part's (the sequential
        model's, in a selection blend), zero for positions it does not read."""
        first, _ = self.parts[0]
        vectors, attributions = first.encode_histories(histories, user_indices)
        rest = [part.user_vectors(histories, user_indices) for part, _ in self.parts[1:]]
        padded = []
        for history, weights in zip(histories, attributions):
            missing = len(history) - len(weights)
            padded.append(np.concatenate([np.zeros(missing, np.float32), weights]) if missing > 0 else weights)
        return np.concatenate([vectors, *rest], axis=1).astype(np.float32), padded

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        return np.concatenate([weight * part.encode_items(records) for part, weight in self.parts],
                              axis=1).astype(np.float32)

    def new_item_calibration(self, boost: float = 0.0) -> NewItemCalibration | None:
        """As for the parts: where the first part places new items from content (its own
        calibration exists), the blend's trained items as each part would see them new."""
        first, _ = self.parts[0]
        if getattr(first, "new_item_calibration", None) is None or first.new_item_calibration() is None:
            return None
        if self._calibration is None:
            by_id = self.items.by_id if isinstance(self.items, ItemRecords) else {
                str(record.get("item_id")): record for record in self.items or []}
            ordered = [by_id.get(item_id, {"item_id": item_id}) for item_id in self.item_ids]
            from_content = first.trained_items_from_content()
            blocks = [from_content] + [weight * part.encode_items(ordered) for part, weight in self.parts[1:]]
            self._calibration = NewItemCalibration.fit(self.item_embeddings, np.concatenate(blocks, axis=1))
        return self._calibration.with_boost(boost)


def blend_item_embeddings(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """The blend's item vectors from each part's (N, D_i) vectors and weight: (N, sum D_i)."""
    return np.concatenate([weight * np.asarray(vectors, np.float32) for vectors, weight in parts],
                          axis=1).astype(np.float32)
