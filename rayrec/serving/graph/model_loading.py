"""The single place serving loads a model directory from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayrec.errors import ModelError
from rayrec.models.bundle import RecommenderModel


def load_model(model_dir: str | Path) -> RecommenderModel:
    """Load a model directory written by training (or a toy model for benchmarks and tests).

    Raises :class:`rayrec.errors.ModelError` naming the directory when it cannot be served.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"model directory {str(model_dir)!r} does not exist or is not a directory")
    from rayrec.serving.toy_model import TOY_MARKER, ToyModel

    if (path / TOY_MARKER).exists():
        return ToyModel.load(path)
    try:
        from rayrec.models.trained import load_model as load_trained  # imported lazily: pulls in torch
    except ImportError as exc:  # pragma: no cover - only before the training layer exists
        raise ModelError(f"cannot load {str(model_dir)!r}: trained-model support is unavailable ({exc})") from exc
    return load_trained(path)  # any model_kind: two-tower, ALS


def item_records(model: Any, model_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Item metadata (title, text, categories) by item id: from the model, else ``items.jsonl``."""
    records = getattr(model, "item_records", None)
    if callable(records):
        records = records()
    if records is None:
        records = getattr(model, "items", None)  # trained models: the rows of items.jsonl
    if isinstance(records, dict):
        return records
    if isinstance(records, list):
        return {str(r["item_id"]): r for r in records}
    if model_dir is None:
        return {}
    path = Path(model_dir) / "items.jsonl"
    if not path.exists():
        return {}
    result: dict[str, dict[str, Any]] = {}
    with path.open() as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                result[str(record["item_id"])] = record
    return result
