"""Item tower: id embedding + categorical features + content vectors, projected to ``dim``."""

from __future__ import annotations

import torch
from torch import nn


class ItemTower(nn.Module):
    """Computes item vectors from whichever item inputs the model was built with.

    Index 0 is padding everywhere, so item ``i`` of the vocabulary is row ``i + 1``.

    Args:
        num_items: vocabulary size N (without padding).
        dim: output dimension D.
        category_ids: (N + 1, C) int64 category indices per item, 0-padded (C = most categories
            an item has), or None.
        num_categories: size of the category vocabulary (without padding).
        content: (N + 1, T) float32 precomputed content vectors (e.g. from a text encoder), or None.
        use_id: whether the id embedding is part of the item vector. Without it an item's vector
            depends only on its content and categories, so unseen items get meaningful vectors.
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        category_ids: torch.Tensor | None = None,
        num_categories: int = 0,
        content: torch.Tensor | None = None,
        use_id: bool = True,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.use_id = use_id
        self.id_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0) if use_id else None
        if self.id_embedding is not None:
            # Xavier-normal, as SASRec: small next to dim**-0.5 on large catalogues, so Adam's
            # fixed-size steps move an item's vector far from its start within a few epochs.
            nn.init.xavier_normal_(self.id_embedding.weight)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        if category_ids is not None and num_categories > 0:
            self.register_buffer("category_ids", category_ids.long(), persistent=True)
            self.category_embedding = nn.EmbeddingBag(num_categories + 1, dim, mode="mean", padding_idx=0)
            nn.init.normal_(self.category_embedding.weight, std=dim**-0.5)
        else:
            self.category_ids = None
            self.category_embedding = None
        if content is not None:
            self.register_buffer("content", content.float(), persistent=True)
            self.content_projection = nn.Sequential(
                nn.Linear(content.shape[1], dim), nn.GELU(), nn.Linear(dim, dim)
            )
        else:
            self.content = None
            self.content_projection = None

    def from_features(
        self,
        item_index: torch.Tensor | None,
        category_ids: torch.Tensor | None,
        content: torch.Tensor | None,
    ) -> torch.Tensor:
        """Item vectors from explicit inputs: (M,) indices, (M, C) categories, (M, T) content -> (M, D).

        Any input may be None (e.g. ``item_index`` for items unseen in training).
        """
        parts = []
        with_id = self.id_embedding is not None and item_index is not None
        if with_id:
            parts.append(self.id_embedding(item_index))
        if self.category_embedding is not None and category_ids is not None:
            vectors = self.category_embedding(category_ids)
            # EmbeddingBag returns zeros for all-padding rows, which is the right "no category".
            parts.append(vectors)
        if self.content_projection is not None and content is not None:
            parts.append(self.project_content(content, with_id))
        if not parts:
            raise ValueError("the item tower has no inputs for these items (no id, categories or content)")
        return torch.stack(parts, dim=0).sum(dim=0)

    def project_content(self, content: torch.Tensor, with_id: bool) -> torch.Tensor:
        """(M, T) content vectors -> (M, D) content part; ``with_id``: whether an id embedding
        is added to it (subclasses may project content alone differently)."""
        return self.content_projection(content)

    def forward(self, item_index: torch.Tensor) -> torch.Tensor:
        """Vectors of vocabulary items: (...,) int64 indices (0 = padding) -> (..., D)."""
        flat = item_index.reshape(-1)
        vectors = self.from_features(
            flat,
            self.category_ids[flat] if self.category_ids is not None else None,
            self.content[flat] if self.content is not None else None,
        )
        return vectors.reshape(*item_index.shape, self.dim)

    def table(self) -> torch.Tensor:
        """All item vectors including padding row 0: (N + 1, D)."""
        device = next(self.parameters()).device
        return self.forward(torch.arange(self.num_items + 1, device=device))
