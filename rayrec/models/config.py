"""Model configuration: which towers, their sizes, and the loss."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Shape of the two-tower model. Defaults train well on MovieLens-sized data on a laptop."""

    model_config = ConfigDict(extra="forbid")

    user_encoder: str = Field("sasrec", description="Registered user tower: sasrec, gru or mean.")
    user_encoder_options: dict[str, Any] = Field(default_factory=dict, description="Options of the user tower.")
    item_encoder: str = Field("item_tower", description="Registered item tower.")
    item_encoder_options: dict[str, Any] = Field(default_factory=dict, description="Options of the item tower.")
    dim: int = Field(128, ge=4, le=1024, description="Shared dimension of user and item vectors.")
    max_len: int = Field(200, ge=2, le=2048, description="The user tower reads at most this many recent items.")
    loss: Literal["auto", "full", "sampled"] = Field(
        "auto", description="full softmax, sampled softmax with logQ, or auto (full up to full_softmax_max_items).")
    # A full softmax costs every position N dot products; the sampled one about the batch's
    # positions plus num_uniform_negatives. Short histories (a few positions per user) over a
    # catalogue past ~20k items make the full one ten times dearer per epoch.
    full_softmax_max_items: int = Field(20_000, ge=1, description="Largest catalogue trained with the full softmax under loss=auto.")
    num_uniform_negatives: int = Field(1000, ge=1, description="Uniform negatives per batch for the sampled softmax.")
    similarity: Literal["dot", "cosine"] = Field("dot", description="Score function between user and item vectors.")
    temperature: float = Field(1.0, gt=0, description="Logit temperature (use about 0.05-0.1 with cosine).")
    use_user_features: bool = Field(False, description="Concatenate categorical user features to the user vector.")

    def resolved_loss(self, num_items: int) -> str:
        if self.loss != "auto":
            return self.loss
        return "full" if num_items <= self.full_softmax_max_items else "sampled"
