"""Loading a model directory and using it: user vectors, cold-start item vectors, top-K."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rayrec.errors import ModelError
from rayrec.models.config import ModelConfig
from rayrec.models.factory import ItemInputs, build_two_tower
from rayrec.models.new_items import NewItemCalibration
from rayrec.models.arrays import shared_tensor
from rayrec.models.order_free import category_vector, read_category_vectors
from rayrec.models.padding import left_pad
from rayrec.models.servable import ServableModel, load_model_dir, read_model_files
from rayrec.schema import Vocabulary

REQUIRED_FILES = ("config.json", "weights.pt", "user_vocab.json", "item_vocab.json", "item_embeddings.npy",
                  "item_popularity.npy")


def _network_of(model_config: ModelConfig, num_items: int, inputs: ItemInputs, num_user_feature_values: int,
                weights: dict[str, torch.Tensor], model_dir: Path) -> torch.nn.Module:
    """The network with ``weights`` as its tensors (``assign``: no copy of the mapped file).
    Built on the meta device, so that no random initialisation is allocated or computed
    (seconds and the id table's size at a million items) only to be replaced; a tower that
    cannot be built there, or that keeps a tensor the weights do not hold (a non-persistent
    buffer), is built on the CPU instead."""
    def build() -> torch.nn.Module:
        return build_two_tower(model_config, num_items, inputs, num_user_feature_values=num_user_feature_values)

    def load(network: torch.nn.Module) -> torch.nn.Module:
        try:
            network.load_state_dict(weights, assign=True)
        except (RuntimeError, KeyError) as exc:
            raise ModelError(f"{model_dir}: weights.pt does not match config.json ({exc})") from None
        return network

    try:
        with torch.device("meta"):
            network = build()
    except Exception:  # a plugin tower that computes with its tensors while it is built
        return load(build())
    network = load(network)
    if any(tensor.is_meta for tensor in (*network.parameters(), *network.buffers())):
        return load(build())
    return network


class TrainedModel(ServableModel):
    """A trained two-tower model loaded from its directory (see :mod:`rayrec.models.bundle`)."""

    def __init__(self, model_dir: Path, config: dict, network, user_vocab: Vocabulary, item_vocab: Vocabulary,
                 item_embeddings: np.ndarray, item_popularity: np.ndarray, histories: list[np.ndarray],
                 items: list[dict] | None) -> None:
        super().__init__(model_dir, config, user_vocab, item_vocab, item_embeddings, item_popularity, histories, items)
        self.network = network
        self.max_len = int(config["train_config"]["model"]["max_len"])
        self.max_history = self.max_len
        self._category_index = {name: i + 1 for i, name in enumerate(config.get("category_vocab", []))}
        self.user_features: np.ndarray | None = None  # (U, F) codes when trained with user features
        self._calibration: NewItemCalibration | None = None
        self._padding_input: torch.Tensor | None = None
        self._item_inputs: torch.Tensor | None = None
        self.category_vectors: np.ndarray | None = None  # (C, D) category_factors.npy, where exported

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path) -> "TrainedModel":
        """Load and check a model directory; a clear :class:`ModelError` if anything is off."""
        model_dir = Path(model_dir)
        files = read_model_files(model_dir, REQUIRED_FILES)
        config = files.config
        try:
            model_config = ModelConfig(**_with_format_1_defaults(config).get("model", {}))
            features = {}
            if (model_dir / "item_features.npz").exists():
                with np.load(model_dir / "item_features.npz") as packed:
                    features = {key: packed[key] for key in packed.files}
            # Mapped, not read: the network's tensors are the file's pages (below), shared by a
            # node's replicas and resident only where read. Serving reads the id table's rows
            # from item_embeddings.npy instead (_history_inputs), so at a million items of dim
            # 128 a replica no longer holds a 480 MB copy of it.
            weights = torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # corrupt or truncated files of any kind
            raise ModelError(f"{model_dir}: cannot read model files ({type(exc).__name__}: {exc})") from None
        inputs = ItemInputs(features.get("category_ids"), int(config.get("num_categories", 0)), features.get("content"))
        network = _network_of(model_config, len(files.item_vocab), inputs, len(config.get("user_feature_vocab", [])),
                              weights, model_dir)
        network.eval()
        user_features = None
        if network.user_feature_embedding is not None and (model_dir / "user_features.npy").exists():
            user_features = np.load(model_dir / "user_features.npy")
        model = cls(model_dir, config, network, files.user_vocab, files.item_vocab, files.item_embeddings,
                    files.item_popularity, files.histories, files.items)
        model.user_features = user_features
        model.category_vectors = read_category_vectors(files)
        return model

    # -- the RecommenderModel protocol -------------------------------------------------------
    @torch.no_grad()
    def encode_histories(self, histories: Sequence[Sequence[int]], user_indices: Sequence[int | None] | None = None
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, D) user vectors and per-user attribution over the last ``max_len`` positions.

        ``histories`` hold 0-based item indices, oldest first. The returned attribution for a
        user has one weight per item of its (truncated) history, oldest first. ``user_indices``
        (training users, None for others) select user features for models trained with them.
        """
        clipped = [np.asarray(h, dtype=np.int64)[-self.max_len:] + 1 for h in histories]
        length = max(1, max((len(h) for h in clipped), default=1))
        sequences = torch.from_numpy(left_pad(clipped, length))
        features = None
        if self.user_features is not None:
            rows = list(user_indices) if user_indices is not None else [None] * len(clipped)
            features = np.zeros((len(clipped), self.user_features.shape[1]), dtype=np.int64)
            for row, user_index in enumerate(rows):
                if user_index is not None:
                    features[row] = self.user_features[user_index]
            features = torch.from_numpy(features)
        vectors, weights = self.network.encode_last(self._history_inputs(sequences), sequences > 0, features)
        vectors, weights = vectors.numpy().astype(np.float32), weights.numpy()
        attributions = [weights[row, length - len(h):] if len(h) else np.zeros(0, np.float32)
                        for row, h in enumerate(clipped)]
        return vectors, attributions

    def _history_inputs(self, sequences: torch.Tensor) -> torch.Tensor:
        """The item tower's vectors of a (B, L) history. With dot similarity the exported item
        vectors are exactly the item tower's output, so a lookup replaces running the tower
        (content towers project text vectors per item) on every request."""
        if self.network.similarity != "dot":
            return self.network.item_tower(sequences)
        if self._padding_input is None:
            self._padding_input = self.network.item_tower(torch.zeros(1, dtype=torch.int64))[0]
            self._item_inputs = shared_tensor(self.item_embeddings)  # the memory-mapped file, no copy
        inputs = self._item_inputs[(sequences - 1).clamp_min(0)]
        inputs[sequences == 0] = self._padding_input
        return inputs

    @torch.no_grad()
    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        """(M, D) vectors for items from content alone (categories, and content vectors when the
        model was trained with feature extractors). Without any usable content the vector is
        the mean item vector: a neutral newcomer."""
        tower = self.network.item_tower
        category_ids = None
        if tower.category_embedding is not None:
            width = tower.category_ids.shape[1]
            category_ids = torch.zeros((len(records), width), dtype=torch.long)
            for row, record in enumerate(records):
                codes = [self._category_index[c] for c in record.get("categories") or [] if c in self._category_index]
                category_ids[row, : len(codes[:width])] = torch.tensor(codes[:width], dtype=torch.long)
        content = None
        if tower.content_projection is not None:
            content = torch.from_numpy(self._content_vectors(records))
        if category_ids is None and content is None:
            vectors = np.repeat(self.mean_item_vector()[None, :], len(records), axis=0)
        else:
            vectors = self._vectors_from_content(category_ids, content)
        if category_ids is None:  # the tower cannot read categories: place items by them here
            for row, record in enumerate(records):
                if not (record.get("text") or record.get("title")) or content is None:
                    centroid = self._category_centroid(record.get("categories") or [])
                    if centroid is not None:
                        vectors[row] = centroid
        return vectors

    def _category_centroid(self, categories: Sequence[str]) -> np.ndarray | None:
        """Where the item tower was trained without categories (the default), a new item with
        categories and no text still lands among its kind (the mean of their items' vectors,
        ``category_factors.npy``), not at the catalogue's mean; None when none is known."""
        rows = [self._category_index[c] - 1 for c in map(str, categories) if c in self._category_index]
        return category_vector(self.category_vectors, rows)

    @torch.no_grad()
    def trained_items_from_content(self) -> np.ndarray | None:
        """(N, D): every trained item's vector from its content alone, as if it were new (what
        :meth:`encode_items` would give it). None when the model has no content inputs: new
        items then all get the neutral mean vector."""
        tower = self.network.item_tower
        rows = torch.arange(1, len(self.item_vocab) + 1)
        category_ids = tower.category_ids[rows] if tower.category_embedding is not None else None
        content = tower.content[rows] if tower.content_projection is not None else None
        if category_ids is None and content is None:
            return None
        return self._vectors_from_content(category_ids, content)

    def _vectors_from_content(self, category_ids: torch.Tensor | None, content: torch.Tensor | None) -> np.ndarray:
        """The item tower's vectors without ids, as serving uses them: unit length for cosine
        models, and the neutral mean vector for items with no known category and no content."""
        vectors = self.network.item_tower.from_features(None, category_ids, content)
        if self.network.similarity == "cosine":
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        vectors = vectors.numpy().astype(np.float32)
        if content is None:  # not the zero vector EmbeddingBag gives all-padding rows
            vectors[(category_ids == 0).all(dim=1).numpy()] = self.mean_item_vector()
        return vectors

    def new_item_calibration(self, boost: float = 0.0) -> NewItemCalibration | None:
        """Scores of items added after training, put on the trained items' scale (see
        :mod:`rayrec.models.new_items`); None when the model has no content inputs."""
        if self._calibration is None:
            from_content = self.trained_items_from_content()
            if from_content is None or len(from_content) < 2:
                return None
            self._calibration = NewItemCalibration.fit(self.item_embeddings, from_content)
        return self._calibration.with_boost(boost)

    def _content_vectors(self, records: Sequence[dict]) -> np.ndarray:
        from rayrec.plugins import create_component

        blocks = []
        for spec in self.config["train_config"].get("item_features", []):
            extractor = create_component("feature_extractor", spec["name"], spec.get("options"))
            blocks.append(np.asarray(extractor.extract(list(records)), dtype=np.float32))
        return np.concatenate(blocks, axis=1)


def _with_format_1_defaults(config: dict) -> dict:
    """The training config of a model directory, with the defaults its format was written
    with where they changed since: before format 2, SASRec blocks were pre-norm."""
    train_config = config["train_config"]
    if int(config.get("format", 1)) < 2:
        model = train_config.setdefault("model", {})
        if model.get("user_encoder", "sasrec") == "sasrec":
            model.setdefault("user_encoder_options", {}).setdefault("block_style", "pre_norm")
    return train_config


def load_model(model_dir: str | Path) -> ServableModel:
    """Deprecated: :func:`rayrec.models.servable.load_model_dir`, the one model loader."""
    import warnings

    warnings.warn("rayrec.models.trained.load_model is deprecated: use rayrec.models.servable.load_model_dir",
                  DeprecationWarning, stacklevel=2)
    return load_model_dir(model_dir)
