"""Built-in user towers and item tower, registered through ``register_encoders``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import ItemEncoder, UserEncoder
from rayrec.hookspecs import hookimpl


class SASRecEncoder(UserEncoder):
    name = "sasrec"
    description = "Causal self-attention over the most recent items (SASRec), with positions."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_blocks: int = Field(2, ge=1, le=12, description="Transformer blocks.")
        num_heads: int = Field(1, ge=1, le=16, description="Attention heads; must divide dim.")
        dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on inputs, attention and feed-forward.")
        block_style: Literal["sasrec", "pre_norm"] = Field(
            "sasrec", description="sasrec: the paper's block layout; pre_norm: a pre-norm transformer block.")

    def build(self, *, dim: int, max_len: int, **_):
        from rayrec.models.sasrec import SASRecTower

        return SASRecTower(dim=dim, max_len=max_len, **self.options.model_dump())


class GRUEncoder(UserEncoder):
    name = "gru"
    description = "GRU over the most recent items (GRU4Rec-style)."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_layers: int = Field(1, ge=1, le=4, description="Stacked GRU layers.")
        dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on the inputs (and between layers).")

    def build(self, *, dim: int, **_):
        from rayrec.models.gru import GRUTower

        return GRUTower(dim=dim, **self.options.model_dump())


class MeanPoolEncoder(UserEncoder):
    name = "mean"
    description = "Running mean of the recent item vectors followed by an MLP."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the MLP.")

    def build(self, *, dim: int, **_):
        from rayrec.models.mean_pool import MeanPoolTower

        return MeanPoolTower(dim=dim, **self.options.model_dump())


class DefaultItemEncoder(ItemEncoder):
    name = "item_tower"
    description = "Id embedding + categories + content vectors, summed in the shared dimension."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        use_id: bool = Field(True, description="Include the id embedding (off: items are pure content).")
        # Off by default: on MovieLens, genre embeddings summed into every item vector lowered
        # NDCG at validation-chosen epochs.
        use_categories: bool = Field(False, description="Include category embeddings where items have categories.")
        use_content: bool = Field(True, description="Include precomputed content vectors where the data has them.")

    def build(self, *, num_items: int, dim: int, category_ids=None, num_categories: int = 0, content=None, **_):
        from rayrec.models.item_tower import ItemTower

        return ItemTower(
            num_items=num_items,
            dim=dim,
            category_ids=category_ids if self.options.use_categories else None,
            num_categories=num_categories if self.options.use_categories else 0,
            content=content if self.options.use_content else None,
            use_id=self.options.use_id,
        )


@hookimpl
def register_encoders(register):
    register(SASRecEncoder)
    register(GRUEncoder)
    register(MeanPoolEncoder)
    register(DefaultItemEncoder)
