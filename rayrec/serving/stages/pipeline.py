"""The three read stages of one model generation in one process (topologies fused and ingress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.serving.schemas import RecommendRequest
from rayrec.serving.stages.encode import HistoryEncoderLogic
from rayrec.serving.stages.errors import RequestError, StageError
from rayrec.serving.stages.preprocess import PreprocessorLogic
from rayrec.serving.stages.scoring import RetrievalLogic


@dataclass
class PipelineLogic:
    """The three read stages of one model generation, side by side in one process."""

    preprocessor: PreprocessorLogic
    encoder: HistoryEncoderLogic
    scorer: RetrievalLogic

    @property
    def model(self) -> Any:
        return self.scorer.model

    def warm_up(self) -> None:
        """One request through the three stages before the replica takes traffic: the first
        torch call and first top-K pay for lazy initialisation, which no user should see."""
        ids = self.model.item_ids
        request = RecommendRequest(user_id="rayrec-warm-up", k=10, recent_items=list(ids[:1]))
        self.scorer.recommend(*self.prepare_and_encode(request))

    def recommend_many(self, requests: list[RecommendRequest]) -> list[dict[str, Any] | StageError]:
        """Answers for requests that queued together: one user-tower pass over their histories
        and one pass over the item matrix for all their vectors, then each request on its own
        (filters, re-rankers, explanations). A bad request answers its StageError alone."""
        prepared = [self.preprocessor.prepare(request) for request in requests]
        personal = [i for i, p in enumerate(prepared) if p.personalized]
        encoded = dict(zip(personal, self.encoder.encode([prepared[i].history_indices for i in personal])))
        scores: dict[int, np.ndarray] = {}
        if len(personal) > 1:
            every = self.scorer.index.scores_many(np.stack([encoded[i][0] for i in personal]))
            scores = dict(zip(personal, every)) if every is not None else {}
        answers: list[dict[str, Any] | StageError] = []
        for i, request in enumerate(prepared):
            vector, attributions = encoded.get(i, (None, None))
            try:
                answers.append(self.scorer.recommend(request, vector, attributions, scores=scores.get(i)))
            except RequestError as exc:
                answers.append(StageError(exc))
        return answers

    def prepare_and_encode(self, request: RecommendRequest):
        prepared = self.preprocessor.prepare(request)
        vector = attributions = None
        if prepared.personalized:
            [(vector, attributions)] = self.encoder.encode([prepared.history_indices])
        return prepared, vector, attributions
