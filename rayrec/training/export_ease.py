"""Writing an EASE model directory (``"model_kind": "ease"``), served by :class:`rayrec.models.ease_model.EASEModel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rayrec.models.ease_model import MODEL_KIND
from rayrec.models.order_free import CATEGORY_VECTORS_FILE
from rayrec.models.order_free import category_mean_vectors
from rayrec.training.model_dir import max_history_for, write_model_dir
from rayrec.training.prepare import PreparedData

MODEL_FORMAT = 1


def export_ease_model_dir(data: PreparedData, l2: float, weights: np.ndarray, out_dir: str | Path,
                          extra_metrics: dict[str, Any] | None = None) -> Path:
    """Write everything serving needs for the EASE weights ``B: (N, N)`` (zero diagonal, as
    :meth:`rayrec.evaluation.baselines.EASEBaseline.item_weights` returns them) into
    ``out_dir``; returns it.

    ``data``: the training data B was fitted on (1-based sequences; every user's history is
    stored for serving). ``l2``: its ridge penalty, recorded in config.json. ``extra_metrics``
    go into ``metrics.json``, ``best_val_ndcg@10`` among them (None when not given).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (data.num_items, data.num_items):
        raise ValueError(f"weights has shape {weights.shape}, expected ({data.num_items}, {data.num_items})")
    item_vectors = np.ascontiguousarray(weights.T)  # row j: what each history item adds to item j's score
    inputs = data.item_inputs
    table = category_mean_vectors(item_vectors, inputs.category_ids, inputs.num_categories)
    if table is not None:
        np.save(out_dir / CATEGORY_VECTORS_FILE, table)
    write_model_dir(
        out_dir, data, model_kind=MODEL_KIND, model_format=MODEL_FORMAT, item_embeddings=item_vectors,
        config={
            "ease_l2": float(l2),
            "max_history": max_history_for(data),
            "category_vocab": data.category_vocab if table is not None else [],
        },
        metrics={"ease_l2": float(l2), **(extra_metrics or {})},
    )
    return out_dir
