"""``content_item_tower``: id embedding + content, trained so the content part also stands alone.

An item unseen in training has no id embedding, so its vector is the content part alone.
Trained with the id part always present, the model never sees such vectors and ranks new
items nowhere (measured: cold HR@10 at random level); trained without ids at all, it loses
the per-item signal that warm recommendations live on. Two ways to get both, combinable:

* ``content_loss_weight``: every step adds a second softmax (this weight) in which each target,
  represented by its content-only vector, must beat every other item's full vector: exactly
  what a new item faces at serving time. The content part learns to rank on its own, on the
  same scale as the full vectors (content + id) that serve items with history;
* ``id_dropout``: a random share of items loses its id part at every training step
  (DropoutNet, Volkovs et al. 2017).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import ItemEncoder
from rayrec.models.item_tower import ItemTower


class ContentItemTower(ItemTower):
    """:class:`ItemTower` with ``id_dropout``: in training, each item row loses its id part
    with that probability (no rescaling: at inference a trained item has its whole id part,
    an unseen item none). Shapes as in ``ItemTower.from_features``: ``(M,) -> (M, D)``."""

    def __init__(self, *args, id_dropout: float = 0.0, content_loss_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= id_dropout <= 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1], got {id_dropout}")
        if content_loss_weight < 0:
            raise ValueError(f"content_loss_weight must be >= 0, got {content_loss_weight}")
        if (id_dropout > 0 or content_loss_weight > 0) and self.content_projection is None and self.category_embedding is None:
            raise ValueError("id_dropout and content_loss_weight need content vectors or categories to fall back on; "
                             "configure item_features (e.g. text_embedding) or give the items categories")
        self.id_dropout = id_dropout
        self.content_loss_weight = content_loss_weight

    def content_vectors(self, item_index: torch.Tensor) -> torch.Tensor:
        """Content-only vectors of vocabulary items (what an unseen item gets): (M,) -> (M, D)."""
        return ItemTower.from_features(
            self,
            None,
            self.category_ids[item_index] if self.category_ids is not None else None,
            self.content[item_index] if self.content is not None else None,
        )

    def auxiliary_views(self):
        """Trained against the same targets as the full vectors (see ``TwoTower.auxiliary_item_views``)."""
        if not self.training or self.content_loss_weight == 0 or self.id_embedding is None:
            return []
        return [(self.content_vectors, self.content_loss_weight)]

    def from_features(self, item_index, category_ids, content):
        if not (self.training and self.id_dropout > 0 and self.id_embedding is not None and item_index is not None):
            return super().from_features(item_index, category_ids, content)
        side = super().from_features(None, category_ids, content)  # content + categories: (M, D)
        keep = torch.rand(item_index.shape[0], 1, device=side.device) >= self.id_dropout
        return side + keep.to(side.dtype) * self.id_embedding(item_index)


class ContentItemEncoder(ItemEncoder):
    name = "content_item_tower"
    description = "Id + content vectors, the content part also trained alone so unseen items rank well (cold start)."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        content_loss_weight: float = Field(
            1.0, ge=0,
            description="Weight of the extra softmax where targets compete by their content-only vectors; 0 = off.")
        id_dropout: float = Field(
            0.0, ge=0, le=1,
            description="Chance an item's id part is dropped at a training step; 1 = content only.")
        # Off by default, as in the built-in item_tower (genre embeddings cost NDCG on MovieLens).
        use_categories: bool = Field(False, description="Include category embeddings where items have categories.")

    def build(self, *, num_items: int, dim: int, category_ids=None, num_categories: int = 0, content=None, **_):
        use_categories = self.options.use_categories
        return ContentItemTower(
            num_items=num_items,
            dim=dim,
            category_ids=category_ids if use_categories else None,
            num_categories=num_categories if use_categories else 0,
            content=content,
            use_id=True,
            id_dropout=self.options.id_dropout,
            content_loss_weight=self.options.content_loss_weight,
        )
