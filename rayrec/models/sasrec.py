"""Causal self-attention sequence encoder (SASRec, Kang & McAuley 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.dropout import Dropout, dropout as fast_dropout
from rayrec.models.user_tower import UserTower, masked_softmax


#: Block layouts. ``sasrec`` is the paper's: the normalised sequence attends over the raw
#: one and is the residual, then a normalised position-wise ReLU network with its own residual.
#: ``pre_norm`` is the usual pre-norm transformer block (GELU), the layout before model format 2.
BLOCK_STYLES = ("sasrec", "pre_norm")


class _Block(nn.Module):
    """Transformer block with causal attention over left-padded sequences (see BLOCK_STYLES)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, style: str = "sasrec") -> None:
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"unknown block style {style!r}; use one of {', '.join(BLOCK_STYLES)}")
        self.style = style
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_output = nn.Linear(dim, dim)
        self.feedforward_norm = nn.LayerNorm(dim)
        if style == "sasrec":
            self.feedforward = nn.Sequential(
                nn.Linear(dim, dim), Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim)
            )
        else:
            self.feedforward = nn.Sequential(
                nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim)
            )
        self.dropout = Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def last_position(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output at the last position only, ``(B, 1, D)``, and that query's
        attention weights ``(B, H, 1, L)``: what ``forward`` gives at ``[:, -1:]``, for one query
        instead of L (keys and values still cover every position)."""
        batch, length, dim = x.shape
        normalised = self.attention_norm(x)
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(normalised[:, -1:], weight[:dim], bias[:dim])
        k, v = F.linear(x if self.style == "sasrec" else normalised, weight[dim:], bias[dim:]).chunk(2, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.num_heads)
        if allowed is not None:  # None: no padding, and the last query sees every position
            scores = scores.masked_fill(~allowed[:, :, -1:, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, 1, dim)
        if self.style == "sasrec":
            out = self.feedforward_norm(normalised[:, -1:] + self.attention_output(attended))
            return out + self.feedforward(out), weights
        out = x[:, -1:] + self.attention_output(attended)
        return out + self.feedforward(self.feedforward_norm(out)), weights

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, want_weights: bool = False):
        """x: (B, L, D); allowed: (B, 1, L, L) bool, True where query t may attend key s, or None
        for causal attention over unpadded sequences."""
        batch, length, dim = x.shape
        normalised = self.attention_norm(x)
        if self.style == "sasrec":
            dim_q = self.qkv.weight[:dim]
            q = F.linear(normalised, dim_q, self.qkv.bias[:dim])
            k, v = F.linear(x, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(normalised).chunk(3, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        weights = None
        # Training on the CPU, attention is written out so its dropout takes the faster mask
        # (rayrec.models.dropout); SDPA's own dropout on the CPU computes the same products.
        drop_attention = self.training and self.dropout.p > 0 and x.device.type == "cpu"
        if want_weights or drop_attention:
            if allowed is None:
                allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.num_heads)
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            attended = (fast_dropout(weights, self.dropout.p) if drop_attention else weights) @ v
        else:
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, is_causal=allowed is None, dropout_p=self.dropout.p if self.training else 0.0
            )
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        if self.style == "sasrec":
            x = self.feedforward_norm(normalised + self.attention_output(attended))
            return x + self.dropout(self.feedforward(x)), weights
        x = x + self.dropout(self.attention_output(attended))
        x = x + self.dropout(self.feedforward(self.feedforward_norm(x)))
        return x, weights


class SASRecTower(UserTower):
    """Stack of causal self-attention blocks with learned positional embeddings.

    ``forward(item_vectors: (B, L, D), mask: (B, L)) -> (B, L, D)`` with L <= ``max_len``.
    Positions are counted from the most recent item, so the last item always has the same
    positional embedding however long the history is.
    """

    def __init__(self, dim: int, max_len: int = 200, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.5, block_style: str = "sasrec", **_: object) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, dim)
        nn.init.normal_(self.position_embedding.weight, std=dim**-0.5)
        self.input_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, num_heads, dropout, block_style) for _ in range(num_blocks))
        if block_style == "sasrec":
            # The paper's Xavier-normal start (larger than torch's default for the projections).
            for parameter in [self.position_embedding.weight, *self.blocks.parameters()]:
                if parameter.dim() > 1:
                    nn.init.xavier_normal_(parameter)
        self.final_norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def _inputs(self, item_vectors: torch.Tensor, mask: torch.Tensor):
        batch, length, _ = item_vectors.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        # Distance from the end: the most recent item is position 0.
        positions = torch.arange(length - 1, -1, -1, device=item_vectors.device)
        x = item_vectors * self.scale + self.position_embedding(positions)
        x = self.input_dropout(x) * mask.unsqueeze(-1).to(x.dtype)
        if not self.training and bool(mask.all()):
            # Serving one history has no padding: plain causal attention, no (L, L) mask to build.
            return x, None
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = causal & mask[:, None, :]
        # Every query may see itself, so fully padded rows never produce NaN.
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        return x, allowed.unsqueeze(1)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, allowed = self._inputs(item_vectors, mask)
        for block in self.blocks:
            x, _ = block(x, allowed)
        return self.final_norm(x)

    def attribution(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last block's attention from the most recent position, averaged over heads: (B, L)."""
        x, allowed = self._inputs(item_vectors, mask)
        weights = None
        for index, block in enumerate(self.blocks):
            x, weights = block(x, allowed, want_weights=index == len(self.blocks) - 1)
        return self._attribution(weights[:, :, -1, :], mask)

    def encode_last(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the last position through the last block (the earlier blocks need every
        position: the last block's keys and values are their outputs)."""
        x, allowed = self._inputs(item_vectors, mask)
        for block in self.blocks[:-1]:
            x, _ = block(x, allowed)
        last, weights = self.blocks[-1].last_position(x, allowed)
        return self.final_norm(last)[:, -1], self._attribution(weights[:, :, -1, :], mask)

    @staticmethod
    def _attribution(last_query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, H, L) attention of the most recent position -> (B, L), averaged over heads."""
        return masked_softmax(torch.log(last_query.mean(dim=1).clamp_min(1e-12)), mask)
