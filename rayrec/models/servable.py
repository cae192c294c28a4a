"""What every kind of model directory shares, and the one loader that picks the kind.

A model directory (layout in :mod:`rayrec.models.bundle`) always holds the vocabularies, the
item vectors, the item popularity, every training user's history and, where known, the item
metadata. ``config.json``'s ``model_kind`` says how user vectors are made from a history:
``"two_tower"`` (also when the key is absent, as in directories written before it existed)
by the trained user tower (:class:`rayrec.models.trained.TrainedModel`), ``"als"`` by an
exact least-squares fold-in (:class:`rayrec.models.als_model.ALSModel`), ``"ease"`` as the
multi-hot vector of the history's items (:class:`rayrec.models.ease_model.EASEModel`),
``"blend"`` by each of its parts, concatenated (:class:`rayrec.models.blend.BlendModel`, a
sequential and an order-free model that model selection blended), ``"toy"`` by a
recency-weighted mean (:class:`rayrec.models.toy.ToyModel`, an untrained model of known
structure for tests, demos and benchmarks).

:func:`load_model_dir` is the one loader: training's checks, ``rayrec recommend`` and every
serving stage call it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rayrec.errors import ModelError
from rayrec.models.histories import ITEMS_FILE, OFFSETS_FILE, Histories
from rayrec.models.item_records import ItemRecords, read_item_records
from rayrec.models.vocabulary_files import read_vocabulary
from rayrec.schema import Vocabulary

if TYPE_CHECKING:
    from rayrec.models.bundle import RecommenderModel

MODEL_KIND_KEY = "model_kind"
DEFAULT_MODEL_KIND = "two_tower"
#: model_kind -> "module:class" of the model that loads it (imported on use: torch is heavy).
MODEL_KINDS = {
    "two_tower": "rayrec.models.trained:TrainedModel",
    "als": "rayrec.models.als_model:ALSModel",
    "ease": "rayrec.models.ease_model:EASEModel",
    "toy": "rayrec.models.toy:ToyModel",
    "blend": "rayrec.models.blend:BlendModel",
}
#: Files every model directory has, whatever its kind.
#: (The training histories too: history_items.npy and history_offsets.npy, or in directories
#: written before them histories.npz; see rayrec.models.histories.)
COMMON_FILES = ("config.json", "user_vocab.json", "item_vocab.json", "item_embeddings.npy", "item_popularity.npy")


@dataclass
class ModelFiles:
    """The parts of a model directory every kind has, read and checked for consistency.

    ``item_embeddings: (N, D)`` and ``item_popularity: (N,)`` float32; ``histories[u]``: user
    u's training items as 0-based int64 indices, oldest first; ``items``: the records of
    ``items.jsonl`` in row order, read on demand where export wrote their offsets
    (:class:`~rayrec.models.item_records.ItemRecords`), else a list; None without the file.
    """

    model_dir: Path
    config: dict
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    item_embeddings: np.ndarray
    item_popularity: np.ndarray
    histories: Histories
    items: ItemRecords | list[dict] | None


def read_model_files(model_dir: str | Path, required: Sequence[str]) -> ModelFiles:
    """Read the shared parts of ``model_dir``, after checking that every file of ``required``
    exists; a :class:`ModelError` naming the directory and the problem otherwise."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found")
    missing = [name for name in required if not (model_dir / name).exists()]
    if not Histories.present(model_dir):
        missing.append(f"{ITEMS_FILE} and {OFFSETS_FILE}")
    if missing:
        raise ModelError(f"{model_dir}: not a complete rayrec model directory; missing {', '.join(missing)}")
    try:
        config = json.loads((model_dir / "config.json").read_text())
        user_vocab = read_vocabulary(model_dir, "user_vocab")  # memory-mapped where export wrote the arrays
        item_vocab = Vocabulary.load(model_dir / "item_vocab.json")  # vocabulary_files says why not mapped
        # Memory-mapped, read-only: every replica on a node reads the same page-cache copy.
        item_embeddings = np.load(model_dir / "item_embeddings.npy", mmap_mode="r")
        if item_embeddings.dtype != np.float32:
            item_embeddings = item_embeddings.astype(np.float32)
        item_popularity = np.load(model_dir / "item_popularity.npy").astype(np.float32)
        histories = Histories.read(model_dir)  # memory-mapped where the directory allows
    except Exception as exc:  # corrupt or truncated files of any kind
        raise ModelError(f"{model_dir}: cannot read model files ({type(exc).__name__}: {exc})") from None
    num_items = len(item_vocab)
    if item_embeddings.shape != (num_items, config.get("dim", item_embeddings.shape[-1])) or item_embeddings.ndim != 2:
        raise ModelError(f"{model_dir}: item_embeddings.npy has shape {item_embeddings.shape}, "
                         f"expected ({num_items}, {config.get('dim')})")
    if len(item_popularity) != num_items or len(histories) != len(user_vocab):
        raise ModelError(f"{model_dir}: vocabularies, popularity and histories disagree in size")
    try:
        items = read_item_records(model_dir, item_vocab)  # mapped, not loaded, where export allows
    except Exception as exc:
        raise ModelError(f"{model_dir}: cannot read items.jsonl ({type(exc).__name__}: {exc})") from None
    return ModelFiles(model_dir, config, user_vocab, item_vocab, item_embeddings, item_popularity, histories, items)


class ServableModel:
    """The part of :class:`rayrec.models.bundle.RecommenderModel` that is the same for every
    kind: ids, vocabularies, training histories and batch top-K. A kind adds
    ``encode_histories``, ``encode_items`` and ``new_item_calibration``."""

    def __init__(self, model_dir: Path, config: dict, user_vocab: Vocabulary, item_vocab: Vocabulary,
                 item_embeddings: np.ndarray, item_popularity: np.ndarray, histories: Sequence[np.ndarray],
                 items: ItemRecords | list[dict] | None) -> None:
        self.model_dir = model_dir
        self.config = config
        self.user_vocab = user_vocab
        self.item_vocab = item_vocab
        self.item_embeddings = item_embeddings
        self.item_popularity = item_popularity
        self._histories = histories
        self.items = items
        self.version = config["model_version"]

    @property
    def item_ids(self) -> list[str]:
        return self.item_vocab.ids

    def mean_item_vector(self) -> np.ndarray:
        """(D,) float32: the mean trained item vector (a newcomer without usable content gets it),
        computed once. It reads the whole memory-mapped item matrix, whose pages are then handed
        back: a scorer that searches compressed codes must not keep the float32 file resident
        because of one ``PUT /items`` (a float32 scorer faults them back in once, from the cache)."""
        mean = getattr(self, "_mean_item_vector", None)
        if mean is None:
            from rayrec.models.arrays import release_pages

            embeddings = self.item_embeddings
            mean = (embeddings.mean(axis=0) if len(embeddings) else np.zeros(embeddings.shape[1])).astype(np.float32)
            release_pages(embeddings)
            self._mean_item_vector = mean
        return mean

    def training_history(self, user_id: str) -> list[str]:
        index = self.user_vocab.index_of(user_id)
        return [] if index is None else self.item_vocab.decode(self._histories[index])

    def training_history_indices(self, user_index: int) -> np.ndarray:
        return self._histories[user_index]

    def encode_histories(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NotImplementedError

    def user_vectors(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                     ) -> np.ndarray:
        """(B, D) user vectors alone; kinds whose attributions cost extra work skip it here."""
        return self.encode_histories(histories, user_indices)[0]

    # -- batch recommendation ----------------------------------------------------------------
    def recommend_indices(self, user_indices: Sequence[int], k: int, batch_size: int = 512
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices and scores for training users, their history excluded:
        -> ((U, k) int64, (U, k) float32)."""
        from rayrec.evaluation.metrics import mask_history, top_k

        k = min(k, len(self.item_vocab))
        all_items, all_scores = [], []
        for start in range(0, len(user_indices), batch_size):
            rows = list(user_indices[start: start + batch_size])
            histories = [self._histories[u] for u in rows]
            vectors = self.user_vectors(histories, rows)
            scores = vectors @ self.item_embeddings.T
            mask_history(scores, histories)
            best = top_k(scores, k)
            all_items.append(best)
            all_scores.append(np.take_along_axis(scores, best, axis=1))
        if not all_items:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(all_items), np.concatenate(all_scores)


def model_kind(model_dir: str | Path) -> str:
    """The ``model_kind`` in ``model_dir/config.json``; the default kind when the file is
    missing or unreadable (that kind's loader then says what is wrong with it)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_MODEL_KIND
    kind = config.get(MODEL_KIND_KEY, DEFAULT_MODEL_KIND) if isinstance(config, dict) else DEFAULT_MODEL_KIND
    return str(kind)


def load_model_dir(model_dir: str | Path) -> "RecommenderModel":
    """Load a model directory of any kind, chosen by its ``config.json``'s ``model_kind``.

    Raises :class:`rayrec.errors.ModelError` naming the directory when it cannot be loaded.
    """
    if not Path(model_dir).is_dir():
        raise ModelError(f"model directory {str(model_dir)!r} does not exist or is not a directory")
    kind = model_kind(model_dir)
    target = MODEL_KINDS.get(kind)
    if target is None:
        raise ModelError(f"{model_dir}: config.json has model_kind {kind!r}, which this rayrec cannot load "
                         f"(known kinds: {', '.join(sorted(MODEL_KINDS))}); was it written by a newer rayrec?")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name).load(model_dir)
