"""rayrec-text: item text to sentence-encoder vectors, so unseen items get meaningful vectors.

Installed, rayrec finds it through the ``rayrec`` entry point (``text``) and registers the
``text_embedding`` feature extractor. Name it in a training config's ``item_features`` and
the item tower learns from the vectors; ``TrainedModel.encode_items`` (the ``PUT /items``
path) calls it again for new items. :func:`encode_query` puts free-text queries in the same
space, for natural-language search.
"""

from __future__ import annotations

from rayrec.hookspecs import hookimpl
from rayrec_text.cache import EmbeddingCache, content_hash
from rayrec_text.extractor import EncodeStats, TextEncoder, encode_query, item_text
from rayrec_text.model import DEFAULT_MODEL, load_sentence_model, resolve_model_dir
from rayrec_text.tower import ContentItemEncoder, ContentItemTower

__version__ = "0.1.0"

__all__ = [
    "ContentItemEncoder",
    "ContentItemTower",
    "DEFAULT_MODEL",
    "EmbeddingCache",
    "EncodeStats",
    "TextEncoder",
    "content_hash",
    "encode_query",
    "item_text",
    "load_sentence_model",
    "resolve_model_dir",
]


@hookimpl
def register_feature_extractors(register):
    register(TextEncoder)


@hookimpl
def register_encoders(register):
    register(ContentItemEncoder)
