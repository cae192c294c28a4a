"""Writing an ALS model directory (``"model_kind": "als"``), served by :class:`rayrec.models.als_model.ALSModel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rayrec.models.als import ALSParams
from rayrec.models.als_model import MODEL_KIND
from rayrec.models.order_free import CATEGORY_VECTORS_FILE
from rayrec.models.order_free import category_mean_vectors
from rayrec.training.model_dir import max_history_for, write_model_dir
from rayrec.training.prepare import PreparedData

MODEL_FORMAT = 1


def export_als_model_dir(data: PreparedData, params: ALSParams, item_factors: np.ndarray, out_dir: str | Path,
                         extra_metrics: dict[str, Any] | None = None) -> Path:
    """Write everything serving needs for ALS ``item_factors: (N, D)`` into ``out_dir``; returns it.

    ``data``: the training data (1-based sequences; every user's history is stored for
    serving). ``extra_metrics`` go into ``metrics.json``, ``best_val_ndcg@10`` among them
    (None when not given: this function only writes what it is handed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = ALSParams.model_validate(params)
    item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    if item_factors.shape != (data.num_items, params.factors):
        raise ValueError(f"item_factors has shape {item_factors.shape}, expected ({data.num_items}, {params.factors})")
    np.save(out_dir / "item_factors.npy", item_factors)
    inputs = data.item_inputs
    table = category_mean_vectors(item_factors, inputs.category_ids, inputs.num_categories)
    if table is not None:
        np.save(out_dir / CATEGORY_VECTORS_FILE, table)
    write_model_dir(
        out_dir, data, model_kind=MODEL_KIND, model_format=MODEL_FORMAT,
        item_embeddings=item_factors,  # the common layout's item vectors
        config={
            "als_params": params.model_dump(),
            "max_history": max_history_for(data),
            "category_vocab": data.category_vocab if table is not None else [],
        },
        metrics={"als_params": params.model_dump(), **(extra_metrics or {})},
    )
    return out_dir
