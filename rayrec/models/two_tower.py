"""The two-tower model: a user tower over the recent-item sequence and an item tower."""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.item_tower import ItemTower
from rayrec.models.user_tower import UserTower


class TwoTowerModel(nn.Module):
    """Scores items for users by the dot product (or cosine) of the two towers' vectors.

    Sequences are (B, L) int64 item indices, left-padded with 0, most recent item last.
    """

    def __init__(self, item_tower: ItemTower, user_tower: UserTower, *, similarity: str = "dot",
                 num_user_feature_values: int = 0) -> None:
        super().__init__()
        self.item_tower = item_tower
        self.user_tower = user_tower
        self.similarity = similarity
        dim = item_tower.dim
        if num_user_feature_values:
            # User features (e.g. age bucket, occupation) as a bag of categorical values.
            self.user_feature_embedding = nn.EmbeddingBag(num_user_feature_values + 1, dim, mode="mean", padding_idx=0)
            self.user_feature_mix = nn.Linear(2 * dim, dim)
        else:
            self.user_feature_embedding = None

    def _normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if self.similarity == "cosine" else vectors

    def sequence_outputs(self, sequences: torch.Tensor, user_features: torch.Tensor | None = None) -> torch.Tensor:
        """User vector after each position: (B, L) -> (B, L, D)."""
        mask = sequences > 0
        outputs = self.user_tower(self.item_tower(sequences), mask)
        return self._normalise(self._with_user_features(outputs, user_features))

    def _with_user_features(self, outputs: torch.Tensor, user_features: torch.Tensor | None) -> torch.Tensor:
        """Mix the user's features (a bag of categorical values) into the tower's output, (B, D)
        or (B, L, D); unchanged for models trained without them."""
        if self.user_feature_embedding is None or user_features is None:
            return outputs
        features = self.user_feature_embedding(user_features)  # (B, D)
        if outputs.dim() == 3:
            features = features.unsqueeze(1).expand_as(outputs)
        return outputs + self.user_feature_mix(torch.cat([outputs, features], dim=-1))

    def user_vectors(self, sequences: torch.Tensor, user_features: torch.Tensor | None = None) -> torch.Tensor:
        """The user vector after the most recent item: (B, L) -> (B, D)."""
        return self.sequence_outputs(sequences, user_features)[:, -1]

    def encode_last(self, item_vectors: torch.Tensor, mask: torch.Tensor, user_features: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving's pass: ``item_vectors`` (B, L, D) of the history (the item tower's output) ->
        the user vectors (B, D) and each position's attribution (B, L), the tower run once."""
        user, attribution = self.user_tower.encode_last(item_vectors, mask)
        return self._normalise(self._with_user_features(user, user_features)), attribution

    def item_table(self) -> torch.Tensor:
        """All item vectors, row 0 = padding: (N + 1, D)."""
        return self._normalise(self.item_tower.table())

    def auxiliary_item_views(self) -> list[tuple[Callable[..., torch.Tensor], float, float]]:
        """Extra (item vectors of indices, loss weight, share of positions) triples from the item
        tower: the training loop adds one softmax per view, over the items as that view
        represents them (e.g. a random share by content alone, as items unseen in training are at
        serving time), on a random share of the batch's positions (an unbiased estimate of the
        mean over all of them, at that share of the cost). A tower may give (view, weight)
        pairs: all positions. A view that takes a ``full_vectors`` keyword is also handed the
        item table's rows of the same indices where the loop has computed them. Empty for most
        towers."""
        views = getattr(self.item_tower, "auxiliary_views", None)
        triples = []
        for view, weight, *share in (views() if views else []):
            triples.append((self._view_of(view), weight, float(share[0]) if share else 1.0))
        return triples

    def _view_of(self, view: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``view`` as the loop calls it: ``(index, full_vectors=None)``, where ``full_vectors``
        (the item table's rows of ``index``, when the loop has it) reaches views that take it,
        to reuse instead of recomputing."""
        takes_full = "full_vectors" in inspect.signature(view).parameters

        def vectors(index: torch.Tensor, full_vectors: torch.Tensor | None = None) -> torch.Tensor:
            if takes_full and full_vectors is not None:
                return self._normalise(view(index, full_vectors=full_vectors))
            return self._normalise(view(index))

        return vectors

    def attribution(self, sequences: torch.Tensor) -> torch.Tensor:
        """Contribution of each history position to the user vector: (B, L) -> (B, L)."""
        mask = sequences > 0
        return self.user_tower.attribution(self.item_tower(sequences), mask)
