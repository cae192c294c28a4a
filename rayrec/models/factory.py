"""Builds a two-tower model from its config through the registered encoders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.two_tower import TwoTowerModel
from rayrec.plugins import create_component


@dataclass
class ItemInputs:
    """Side inputs of the item tower, rows in vocabulary order with padding row 0.

    category_ids: (N + 1, C) int64, 0-padded; content: (N + 1, T) float32.
    """

    category_ids: np.ndarray | None = None
    num_categories: int = 0
    content: np.ndarray | None = None


def build_two_tower(config: ModelConfig, num_items: int, item_inputs: ItemInputs | None = None,
                    num_user_feature_values: int = 0) -> TwoTowerModel:
    """A fresh, untrained model with towers chosen by name in ``config``."""
    item_inputs = item_inputs or ItemInputs()
    item_encoder = create_component("encoder", config.item_encoder, config.item_encoder_options)
    user_encoder = create_component("encoder", config.user_encoder, config.user_encoder_options)
    if item_encoder.kind != "item":
        raise ValueError(f"encoder {config.item_encoder!r} is a {item_encoder.kind} tower, not an item tower")
    if user_encoder.kind != "user":
        raise ValueError(f"encoder {config.user_encoder!r} is a {user_encoder.kind} tower, not a user tower")
    item_tower = item_encoder.build(
        num_items=num_items,
        dim=config.dim,
        category_ids=None if item_inputs.category_ids is None else torch.from_numpy(np.array(item_inputs.category_ids)),
        num_categories=item_inputs.num_categories,
        content=None if item_inputs.content is None else torch.from_numpy(np.array(item_inputs.content)),
    )
    user_tower = user_encoder.build(dim=config.dim, max_len=config.max_len, num_items=num_items)
    return TwoTowerModel(item_tower, user_tower, similarity=config.similarity,
                         num_user_feature_values=num_user_feature_values if config.use_user_features else 0)
