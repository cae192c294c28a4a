"""Warm-starting a two-tower model from a previous model directory (``rayrec train --init-from``).

A daily retrain on new events should not learn everything again. The previous model's
architecture (its ``model`` and ``item_features`` settings) is kept, and its weights become
the starting point, with the vocabularies allowed to grow:

- rows of tables indexed by a vocabulary (the item id embedding, category embedding, user
  feature embedding) are mapped by id: an item the previous model knew keeps its trained row,
  wherever the new vocabulary puts it; a new item keeps the fresh row the model is built with;
- every other weight of the same shape is copied; one whose shape changed stays fresh, and
  is named in the log;
- buffers (the items' categories and content vectors) are data, so they come from the new data.

There are no per-user weights (the user tower reads the user's recent items), so new users
need nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rayrec.errors import ConfigError
from rayrec.models.factory import build_two_tower
from rayrec.training.config import TrainConfig
from rayrec.training.prepare import PreparedData

#: Weights whose rows are indexed by a vocabulary, 1-based (row 0: padding), and that vocabulary.
ITEM_ROWS = "items"
VOCABULARY_ROWS = {
    "item_tower.id_embedding.weight": ITEM_ROWS,
    "item_tower.category_embedding.weight": "categories",
    "user_feature_embedding.weight": "user features",
}


def _previous_model(model_dir: str | Path):
    from rayrec.models.servable import load_model_dir
    from rayrec.models.trained import TrainedModel

    model = load_model_dir(model_dir)
    if not isinstance(model, TrainedModel):
        kind = getattr(model, "config", {}).get("model_kind", type(model).__name__)
        raise ConfigError(f"--init-from {model_dir}: a {kind} model; only a two-tower model directory "
                          "(trained with --no-search, or selected as sasrec) can warm-start training")
    return model


def warm_start_config(model_dir: str | Path, config: TrainConfig) -> TrainConfig:
    """``config`` with the previous model's architecture (``model`` and ``item_features``), so
    that its weights fit; the other settings (epochs, learning rate, ...) stay ``config``'s."""
    previous = _previous_model(model_dir).config["train_config"]
    merged = config.model_dump()
    merged.update(model=previous["model"], item_features=previous.get("item_features", []))
    return TrainConfig(**merged)


def _row_map(old_ids: list[str], new_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(old rows, new rows) of the ids both vocabularies hold, 1-based, padding row 0 included."""
    old_index = {value: i for i, value in enumerate(old_ids)}
    pairs = [(old_index[value] + 1, i + 1) for i, value in enumerate(new_ids) if value in old_index]
    old_rows = np.array([0] + [p[0] for p in pairs], dtype=np.int64)
    new_rows = np.array([0] + [p[1] for p in pairs], dtype=np.int64)
    return old_rows, new_rows


def initial_weights(model_dir: str | Path, data: PreparedData, config: TrainConfig,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """The state dict a model of ``data`` starts from: ``model_dir``'s weights mapped onto
    ``data``'s vocabularies (see the module docstring). ``config`` is the training config
    (:func:`warm_start_config`'s); new rows are initialised as training with ``config.seed``
    initialises them, so they are the rows the workers would have built."""
    previous = _previous_model(model_dir)
    old_weights = previous.network.state_dict()
    vocabularies = {
        ITEM_ROWS: (previous.item_vocab.ids, data.item_vocab.ids),
        "categories": (list(previous.config.get("category_vocab", [])), list(data.category_vocab)),
        "user features": (list(previous.config.get("user_feature_vocab", [])), list(data.user_feature_vocab)),
    }
    torch.manual_seed(int(config.seed))
    fresh = build_two_tower(config.model, data.num_items, data.item_inputs,
                            num_user_feature_values=len(data.user_feature_vocab))
    buffers = {name for name, _ in fresh.named_buffers()}
    weights = {name: value.detach().clone() for name, value in fresh.state_dict().items()}
    old_items, new_items = len(previous.item_vocab), data.num_items
    refreshed = []
    for name, value in weights.items():
        old = old_weights.get(name)
        if name in buffers or old is None:
            continue
        vocabulary = VOCABULARY_ROWS.get(name)
        if vocabulary is None and old.shape != value.shape and old.dim() >= 1 \
                and (old.shape[0], value.shape[0]) == (old_items + 1, new_items + 1) and old.shape[1:] == value.shape[1:]:
            vocabulary = ITEM_ROWS  # a plugin tower's own per-item table
        if vocabulary is not None and old.shape[1:] == value.shape[1:]:
            old_rows, new_rows = _row_map(*vocabularies[vocabulary])
            value[torch.from_numpy(new_rows)] = old[torch.from_numpy(old_rows)].to(value.dtype)
        elif old.shape == value.shape:
            value.copy_(old)
        else:
            refreshed.append(name)
    kept = len(set(previous.item_vocab.ids) & set(data.item_vocab.ids))
    log(f"warm start from {model_dir}: {kept:,} of {new_items:,} items keep their trained vectors, "
        f"{new_items - kept:,} new ones start fresh ({old_items - kept:,} of the previous model's are gone)"
        + (f"; fresh because their shape changed: {', '.join(refreshed)}" if refreshed else ""))
    return weights
