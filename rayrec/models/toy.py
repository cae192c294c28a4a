"""A model with a known structure, no training needed: for benchmarks, demos and tests.

Items fall into ``num_categories`` clusters: an item's vector is its category's centre plus
noise, so users whose history is in one category get that category back. The user tower is
a recency-weighted mean of the history's item vectors; the attribution of each position is
its weight times its similarity to the result. It satisfies
:class:`rayrec.models.bundle.RecommenderModel`; its directory's ``config.json`` has
``model_kind: toy``, so :func:`rayrec.models.servable.load_model_dir` loads it like any other
kind. Tests and plugins import it from :mod:`rayrec.testing`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

#: The ``model_kind`` in a toy model directory's ``config.json``.
TOY_MODEL_KIND = "toy"
CATEGORY_NAMES = ["Action", "Comedy", "Drama", "Horror", "Romance", "SciFi", "Documentary", "Animation"]


class ToyModel:
    """Clustered random item vectors and a mean-pooling user tower."""

    def __init__(
        self,
        item_ids: list[str],
        item_embeddings: np.ndarray,
        item_popularity: np.ndarray,
        category_centers: np.ndarray,
        histories: dict[str, list[str]],
        records: dict[str, dict],
        version: str = "toy-1",
        max_history: int = 50,
        category_names: list[str] | None = None,
    ) -> None:
        self.category_names = category_names or CATEGORY_NAMES[: len(category_centers)]
        self.item_ids = item_ids
        self.item_embeddings = np.ascontiguousarray(item_embeddings, dtype=np.float32)
        self.item_popularity = np.asarray(item_popularity, dtype=np.float32)
        self.category_centers = category_centers.astype(np.float32)
        self.histories = histories
        self.records = records
        self.version = version
        self.max_history = max_history

    # -- building and saving ----------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        num_items: int = 1000,
        dim: int = 32,
        num_users: int = 100,
        num_categories: int = 8,
        history_length: int = 10,
        seed: int = 0,
        version: str = "toy-1",
        max_history: int = 50,
    ) -> "ToyModel":
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(num_categories, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        category = np.arange(num_items) % num_categories
        vectors = centers[category] + 0.35 * rng.normal(size=(num_items, dim)).astype(np.float32) / np.sqrt(dim)
        item_ids = [f"item{i}" for i in range(num_items)]
        popularity = (1000.0 / (1 + rng.permutation(num_items))).astype(np.float32)
        names = [CATEGORY_NAMES[c % len(CATEGORY_NAMES)] + ("" if c < len(CATEGORY_NAMES) else str(c)) for c in range(num_categories)]
        records = {
            item_ids[i]: {"item_id": item_ids[i], "title": f"Item {i}", "text": "", "categories": [names[category[i]]]}
            for i in range(num_items)
        }
        histories = {}
        for u in range(num_users):
            c = u % num_categories
            members = np.flatnonzero(category == c)
            picks = rng.choice(members, size=min(history_length, len(members)), replace=False)
            histories[f"user{u}"] = [item_ids[i] for i in picks]
        return cls(item_ids, vectors, popularity, centers, histories, records, version, max_history, names)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"model_kind": TOY_MODEL_KIND, "model_version": self.version, "max_history": self.max_history,
                "category_names": self.category_names}
        (path / "config.json").write_text(json.dumps(meta))
        (path / "item_vocab.json").write_text(json.dumps(self.item_ids))
        np.save(path / "item_embeddings.npy", self.item_embeddings)
        np.save(path / "item_popularity.npy", self.item_popularity)
        np.save(path / "category_centers.npy", self.category_centers)
        (path / "histories.json").write_text(json.dumps(self.histories))
        with (path / "items.jsonl").open("w") as handle:
            for item_id in self.item_ids:
                handle.write(json.dumps(self.records[item_id]) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "ToyModel":
        path = Path(model_dir)
        meta = json.loads((path / "config.json").read_text())
        records = {}
        with (path / "items.jsonl").open() as handle:
            for line in handle:
                record = json.loads(line)
                records[record["item_id"]] = record
        return cls(
            item_ids=json.loads((path / "item_vocab.json").read_text()),
            item_embeddings=np.load(path / "item_embeddings.npy"),
            item_popularity=np.load(path / "item_popularity.npy"),
            category_centers=np.load(path / "category_centers.npy"),
            histories=json.loads((path / "histories.json").read_text()),
            records=records,
            version=meta["model_version"],
            max_history=meta["max_history"],
            category_names=meta["category_names"],
        )

    # -- the RecommenderModel protocol ------------------------------------------------------
    def item_records(self) -> dict[str, dict]:
        return self.records

    def training_history(self, user_id: str) -> list[str]:
        return list(self.histories.get(user_id, []))

    def encode_histories(self, histories: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """histories: B sequences of item indices (oldest first) -> ((B, D), [(L_b,)])."""
        dim = self.item_embeddings.shape[1]
        out = np.zeros((len(histories), dim), dtype=np.float32)
        attributions = []
        for b, history in enumerate(histories):
            idx = np.asarray([i for i in history if 0 <= i < len(self.item_ids)], dtype=np.int64)
            if len(idx) == 0:
                attributions.append(np.zeros(len(history), dtype=np.float32))
                continue
            weights = np.linspace(1.0, 2.0, num=len(idx), dtype=np.float32)  # recent counts more
            vectors = self.item_embeddings[idx]
            user = (weights[:, None] * vectors).sum(0) / weights.sum()
            out[b] = user
            sim = vectors @ user / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(user) + 1e-9)
            contribution = np.clip(weights * sim, 0, None)
            contribution /= contribution.sum() + 1e-9
            attributions.append(contribution.astype(np.float32))
        return out, attributions

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        """(M, D) vectors from content: the mean centre of the item's known categories,
        plus a small deterministic hash of its title and text."""
        dim = self.item_embeddings.shape[1]
        index = {name: i for i, name in enumerate(self.category_names)}
        out = np.zeros((len(records), dim), dtype=np.float32)
        for m, record in enumerate(records):
            cats = [index[c] for c in record.get("categories") or [] if c in index]
            text = f"{record.get('title', '')} {record.get('text', '')}".encode()
            seed = int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
            noise = np.random.default_rng(seed).normal(size=dim).astype(np.float32) / np.sqrt(dim)
            base = self.category_centers[cats].mean(0) if cats else np.zeros(dim, dtype=np.float32)
            out[m] = base + 0.35 * noise
        return out


def write_toy_model(model_dir: str | Path, **kwargs) -> Path:
    """Generate a :class:`ToyModel` (see :meth:`ToyModel.generate` for the knobs) and save it."""
    return ToyModel.generate(**kwargs).save(model_dir)
