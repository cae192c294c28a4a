"""The hooks a rayrec plugin can implement.

Registration hooks receive a ``register`` callback and call it once per component class
(the ``llm`` idiom), so adding a component never means returning and merging lists.
Lifecycle hooks are called by the serving and training stages at the moments named below.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from rayrec.components import (
    Candidate,
    CandidateSource,
    DataSource,
    Encoder,
    FeatureExtractor,
    FeedbackEvent,
    FeedbackHandler,
    Scorer,
    ScoringContext,
)
from rayrec.state.base import BaseStateStore

hookspec = pluggy.HookspecMarker("rayrec")
hookimpl = pluggy.HookimplMarker("rayrec")


@hookspec
def register_feature_extractors(register: Callable[[type[FeatureExtractor]], None]) -> None:
    """Register feature extractors that turn raw item or user attributes into vectors."""


@hookspec
def register_encoders(register: Callable[[type[Encoder]], None]) -> None:
    """Register user towers and item towers that the two-tower model can be built from."""


@hookspec
def register_scorers(register: Callable[[type[Scorer]], None]) -> None:
    """Register scorers that re-score or re-rank retrieved candidates at serving time."""


@hookspec
def register_candidate_sources(register: Callable[[type[CandidateSource]], None]) -> None:
    """Register candidate sources that propose items besides embedding retrieval."""


@hookspec
def register_feedback_handlers(register: Callable[[type[FeedbackHandler]], None]) -> None:
    """Register feedback handlers that are called with every durable batch of feedback events."""


@hookspec
def register_data_sources(register: Callable[[type[DataSource]], None]) -> None:
    """Register data sources that load interactions, items and users from a path."""


@hookspec
def register_state_stores(register: Callable[[type[BaseStateStore]], None]) -> None:
    """Register state stores (event log, user state, item catalogue), selected by URL scheme."""


@hookspec
def filter_candidates(candidates: list[Candidate], context: ScoringContext) -> list[Candidate] | None:
    """Drop candidates a user must not see; return the kept list, or None to keep all.

    Called by the scoring stage after the registered scorers, once per implementation, each
    seeing the previous one's output.
    """


@hookspec
def feedback_ingested(events: list[FeedbackEvent]) -> None:
    """Called once per batch of feedback events after they are durably stored."""


@hookspec
def training_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
    """Called on the first training worker after each validated epoch (every ``eval_every``) with its metrics."""
