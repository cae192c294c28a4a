"""A trained model directory, loaded without the training data.

Layout of a model directory (written by training, read by ``rayrec recommend`` and serving)::

    config.json            model config, component names and options, version, data summary
    weights.pt             state dict of the two-tower model (memory-mapped: rayrec.models.trained)
    user_vocab.json        user ids, index order
    item_vocab.json        item ids, index order
    user_vocab.ids.npy     the user ids again as fixed-width UTF-8 arrays: in index order,
    user_vocab.sorted.npy  sorted, and each sorted id's index; memory-mapped by serving where
    user_vocab.rows.npy    present (rayrec.models.vocabulary_files)
    item_embeddings.npy    (N, D) float32 item vectors from the item tower
    item_popularity.npy    (N,) float32 training interaction counts
    history_items.npy      every training user's items, one user after another (for recommend/serving;
    history_offsets.npy    (U + 1,) where each user's starts; both memory-mapped: rayrec.models.histories)
    items.jsonl            item metadata (title, text, categories) where known, and
    items.offsets.npy      where each record's line starts, mapped (rayrec.models.item_records)
    items.filters.json     the attribute names and, for attributes of up to 4,096 values, each
    items.filter_rows.npy  value's matching rows: request filters read them (item_records)
    item_features.npz      content/categorical inputs of the item tower, where used
    category_factors.npy   (C, D) mean item vector per category (config.json's category_vocab),
                           where the data had categories: new items with categories, no text
    item_index.faiss       HNSW index over item_embeddings, for 250,000 items or more (faiss);
                           its parameters (scaled with the catalogue) in config.json's item_index
    text_index.faiss       HNSW index over the searchable items' text vectors (POST /search), for
    text_index_rows.npy    the same catalogues when the only item feature encodes queries; graph
                           id -> item row; recorded in config.json's text_index
    item_index.<name>.faiss  compressed item vectors (flat-int8, hnsw-pq32, ...) that
                           `rayrec index build` saved, listed in item_indexes.json (faiss)
    metrics.json           training curve and validation/test metrics
    training_curve.png     loss and validation NDCG per epoch

``config.json``'s ``model_kind`` says how a history becomes a user vector (loading dispatches
on it: :func:`rayrec.models.servable.load_model_dir`). Absent or ``"two_tower"``: the layout
above. ``"als"`` (implicit ALS, :mod:`rayrec.models.als_model`): no weights.pt and no
training_curve.png; instead::

    item_factors.npy       (N, D) float32 ALS item factors (item_embeddings.npy holds the same)
    category_factors.npy   (C, D) mean item factor per category of config.json's category_vocab,
                           the vector of items added later, where the data had categories

and config.json holds ``als_params`` (factors, regularization, alpha, iterations) and
``max_history`` (the most recent events folded in per request). ``"ease"`` (EASE,
:mod:`rayrec.models.ease_model`): no weights.pt and no training_curve.png either;
item_embeddings.npy holds ``B^T``, ``(N, N)`` float32 with a zero diagonal (so ``dim`` is N),
category_factors.npy (``(C, N)``, where the data had categories) the mean row of ``B^T`` per
category, and config.json holds ``ease_l2`` and ``max_history``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class RecommenderModel(Protocol):
    """What serving and ``rayrec recommend`` need from a trained model."""

    version: str
    item_ids: list[str]  # index order of item_embeddings
    item_embeddings: np.ndarray  # (N, D) float32
    item_popularity: np.ndarray  # (N,) float32
    max_history: int  # the user tower reads at most this many recent items

    def training_history(self, user_id: str) -> list[str]:
        """The user's training item ids, oldest first; [] for users not seen in training."""

    def encode_histories(self, histories: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """User vectors (B, D) from item-index sequences (oldest first, unknown ids dropped),
        and per user an attribution weight per history position (len(history),) used for
        explanations (which recent items contributed most)."""

    def encode_items(self, records: Sequence[dict]) -> np.ndarray:
        """(M, D) item vectors computed from content alone (title, text, categories) for items
        not in the trained vocabulary: the cold-start path of ``PUT /items``."""

    # Optional: ``new_item_calibration(boost) -> NewItemCalibration | None`` puts the scores of
    # encode_items vectors on the trained items' scale (rayrec.models.new_items); serving uses
    # raw scores for models without it.
