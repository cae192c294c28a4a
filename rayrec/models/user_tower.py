"""The interface every user tower implements, and a shared helper."""

from __future__ import annotations

import torch
from torch import nn


class UserTower(nn.Module):
    """Encodes a user's recent item sequence into one vector per position.

    ``forward(item_vectors: (B, L, D), mask: (B, L) bool) -> (B, L, D)``: sequences are
    left-padded (``mask`` False on padding) with the most recent item last. Position ``t``
    sees only items ``<= t`` (causal), so training predicts the next item at every position and
    serving reads the last position. Because the output depends only on the sequence, a new
    event changes the user vector at once, without retraining.
    """

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def attribution(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """How much each history position contributed to the last position: (B, L), rows sum to 1.

        Default: softmax of each history item's similarity to the user vector. Towers with a
        better notion (attention weights) override it.
        """
        return self.encode_last(item_vectors, mask)[1]

    def encode_last(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What serving asks for: the last position's vector ``(B, D)`` and its attribution
        ``(B, L)``, in one pass. The default runs ``forward`` once and attributes by each history
        item's similarity to that vector; a tower can override it to compute only the last
        position (SASRec does: serving's cost is then one query, not L)."""
        user = self.forward(item_vectors, mask)[:, -1]  # (B, D)
        similarity = torch.einsum("bld,bd->bl", item_vectors, user)
        return user, masked_softmax(similarity, mask)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis ignoring masked-out entries; all-masked rows give zeros."""
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)
