"""Writing an ALS model directory (``"model_kind": "als"``), served by :class:`rayrec.models.als_model.ALSModel`."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

import rayrec
from rayrec.models.als import ALSParams
from rayrec.models.als_model import MODEL_KIND
from rayrec.training.prepare import PreparedData

MODEL_FORMAT = 1
#: Serving folds in at most this many recent events, or the longest training history if longer.
MIN_MAX_HISTORY = 500


def category_factors(item_factors: np.ndarray, category_ids: np.ndarray | None, num_categories: int
                     ) -> np.ndarray | None:
    """(C, D): per category the mean factor of its items, the cold-start vector of a new item
    in it; None without categories. ``category_ids``: (N + 1, W) 1-based codes, 0 = none
    (row 0 is padding), as in :class:`rayrec.models.factory.ItemInputs`. A category without
    items gets the mean item vector."""
    if category_ids is None or num_categories == 0:
        return None
    codes = category_ids[1:]
    items, slots = np.nonzero(codes)
    sums = np.zeros((num_categories, item_factors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes[items, slots] - 1, item_factors[items])
    counts = np.bincount(codes[items, slots] - 1, minlength=num_categories)
    table = np.repeat(item_factors.mean(axis=0, keepdims=True), num_categories, axis=0).astype(np.float64)
    table[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    return table.astype(np.float32)


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
    np.save(out_dir / "item_embeddings.npy", item_factors)  # the common layout's item vectors
    flat = np.concatenate(data.sequences) - 1 if data.sequences else np.zeros(0, np.int64)
    np.save(out_dir / "item_popularity.npy", np.bincount(flat, minlength=data.num_items).astype(np.float32))
    data.user_vocab.save(out_dir / "user_vocab.json")
    data.item_vocab.save(out_dir / "item_vocab.json")
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    np.savez_compressed(out_dir / "histories.npz", lengths=lengths, items=flat)
    inputs = data.item_inputs
    table = category_factors(item_factors, inputs.category_ids, inputs.num_categories)
    if table is not None:
        np.save(out_dir / "category_factors.npy", table)
    if data.items is not None:
        with open(out_dir / "items.jsonl", "w") as handle:
            for record in data.items.records():
                handle.write(json.dumps(record) + "\n")
    version = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    (out_dir / "config.json").write_text(json.dumps({
        "format": MODEL_FORMAT,
        "model_kind": MODEL_KIND,
        "rayrec_version": rayrec.__version__,
        "model_version": version,
        "als_params": params.model_dump(),
        "max_history": int(max(MIN_MAX_HISTORY, lengths.max(initial=0))),
        "num_items": data.num_items,
        "num_users": len(data.user_vocab),
        "num_interactions": data.num_interactions,
        "dim": int(item_factors.shape[1]),
        "category_vocab": data.category_vocab if table is not None else [],
        "dataset": data.name,
    }, indent=2))
    metrics = {
        "model_version": version,
        "model_kind": MODEL_KIND,
        "best_val_ndcg@10": None,
        "als_params": params.model_dump(),
        **(extra_metrics or {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out_dir
