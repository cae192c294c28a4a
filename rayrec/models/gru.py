"""GRU sequence encoder (GRU4Rec-style) over the recent items."""

from __future__ import annotations

import torch
from torch import nn

from rayrec.models.user_tower import UserTower


class GRUTower(UserTower):
    """A GRU over the sequence; the hidden state at each position is that position's vector.

    ``forward(item_vectors: (B, L, D), mask: (B, L)) -> (B, L, D)``. Left padding means the
    GRU reads padding first; padded inputs are zero vectors, so they barely move the state.
    """

    def __init__(self, dim: int, num_layers: int = 1, dropout: float = 0.2, **_: object) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output = nn.Linear(dim, dim)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inputs = self.input_dropout(item_vectors * mask.unsqueeze(-1).to(item_vectors.dtype))
        hidden, _ = self.gru(inputs)
        return self.output(hidden)
