"""Mean pooling of the recent-history item vectors."""

from __future__ import annotations

import torch
from torch import nn

from rayrec.models.user_tower import UserTower


class MeanPoolTower(UserTower):
    """Causal running mean of the item vectors, then a small MLP.

    ``forward(item_vectors: (B, L, D), mask: (B, L)) -> (B, L, D)``.
    """

    def __init__(self, dim: int, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(item_vectors.dtype).unsqueeze(-1)
        running_sum = torch.cumsum(item_vectors * weights, dim=1)
        running_count = torch.cumsum(weights, dim=1).clamp_min(1.0)
        mean = running_sum / running_count
        return mean + self.output(mean)
