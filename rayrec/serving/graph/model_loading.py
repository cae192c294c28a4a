"""What serving reads from a loaded model besides the model itself: its item metadata.

Model directories are loaded by :func:`rayrec.models.servable.load_model_dir`, the one loader.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rayrec.models.item_records import ItemRecords
from rayrec.models.servable import load_model_dir


def load_model(model_dir: str | Path):
    """Deprecated: :func:`rayrec.models.servable.load_model_dir`, the one model loader."""
    warnings.warn("rayrec.serving.graph.model_loading.load_model is deprecated: use "
                  "rayrec.models.servable.load_model_dir", DeprecationWarning, stacklevel=2)
    return load_model_dir(model_dir)


def item_records(model: Any, model_dir: str | Path | None = None) -> Mapping[str, dict[str, Any]]:
    """Item metadata (title, text, categories) by item id: from the model (a trained model's
    mapped ``items.jsonl``, rayrec.models.item_records), else ``items.jsonl`` read here."""
    records = getattr(model, "item_records", None)
    if callable(records):
        records = records()
    if records is None:
        records = getattr(model, "items", None)  # trained models: the rows of items.jsonl
    if isinstance(records, ItemRecords):
        return records.by_id
    if isinstance(records, Mapping):
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
