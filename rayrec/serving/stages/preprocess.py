"""The preprocessing stage: the user's current sequence from training history + fresh events."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rayrec.components import FeatureExtractor
from rayrec.models.bundle import RecommenderModel
from rayrec.schema import UNKNOWN_INDEX
from rayrec.serving.schemas import PreparedRequest, RecommendRequest
from rayrec.serving.stages.item_rows import item_vocabulary
from rayrec.state.base import BaseStateStore, UserState


class PreprocessorLogic:
    """Builds the sequence the user tower reads, and the sets the scorer must filter.

    The sequence is the user's training history (unless the user was erased), then the
    events in the state store in arrival order, then ``recent_items`` from the request. An
    event of weight w > 0 appears ``max(1, round(w))`` times (a purchase counts more than a
    view); weight 0 is ignored; a negative weight (dislike) removes the item from the
    sequence and excludes it for good. The last ``model.max_history`` entries are kept.
    """

    def __init__(
        self,
        model: RecommenderModel,
        store: BaseStateStore,
        event_weights: dict[str, float],
        generation: int = 0,
        feature_extractors: Sequence[FeatureExtractor] = (),
    ) -> None:
        self.model = model
        self.store = store
        self.event_weights = dict(event_weights)
        self.generation = generation
        self.feature_extractors = [e for e in feature_extractors if e.target == "user"]
        # The model's own vocabulary, not a dict copied from it (item_rows says what that costs).
        self.item_vocab = item_vocabulary(model)
        self.max_history = int(model.max_history)

    def prepare(self, request: RecommendRequest) -> PreparedRequest:
        if request.user_id is None:  # an anonymous session: nothing stored, nothing trained on
            state, training = UserState(user_id=""), []
        else:
            state = self.store.user_state(request.user_id, limit=self.max_history * 4)
            training = [] if state.erased else list(self.model.training_history(request.user_id))

        disliked = set(state.disliked)
        sequence: list[str] = list(training)
        for item_id, event_type in state.recent:
            weight = self.event_weights.get(event_type, 0.0)
            if weight < 0:
                disliked.add(item_id)
            elif weight > 0:
                sequence.extend([item_id] * max(1, int(round(weight))))
        sequence.extend(request.recent_items)
        if disliked:
            sequence = [item for item in sequence if item not in disliked]
        sequence = sequence[-self.max_history :] if self.max_history > 0 else []

        # Items the model does not know cannot enter the tower.
        indices = self.item_vocab.encode(sequence, unknown="mark").tolist()
        history_ids = [item_id for item_id, index in zip(sequence, indices) if index != UNKNOWN_INDEX]
        history_indices = [index for index in indices if index != UNKNOWN_INDEX]

        if state.recent or training:
            source = "history"
        elif request.recent_items:
            source = "session"
        else:
            source = "popular"
        if not history_indices:
            source = "popular"

        seen = set(training) | {item for item, _ in state.recent} | set(request.recent_items)
        return PreparedRequest(
            user_id=request.user_id,
            k=request.k,
            generation=self.generation,
            history_ids=history_ids,
            history_indices=history_indices,
            seen=seen,
            exclude=disliked | set(request.exclude_items),
            filters=dict(request.filters),
            source=source,
            user_features=self._user_features(request.user_id, history_ids),
            include=list(request.include),
            scorer_options=dict(request.scorer_options),
            arm=request.arm,
        )

    def _user_features(self, user_id: str | None, history_ids: list[str]) -> Any:
        if not self.feature_extractors:
            return None
        record = {"user_id": user_id, "recent_items": history_ids}
        return np.concatenate([e.extract([record])[0] for e in self.feature_extractors]).astype(np.float32)
