"""Base classes for every pluggable component.

A component is a small class with a ``name``, a nested pydantic ``Options`` model and one
main method. Plugins subclass one of the bases below and hand the class to the ``register``
callback of the matching hook (see :mod:`rayrec.hookspecs`). Built-in components use exactly
the same route.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class NoOptions(BaseModel):
    """Options model for components that take none; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")


class ComponentSpec(BaseModel):
    """A registered component by name, with its options (an entry of a config's component list)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class Component:
    """Common shape of all components: a unique ``name`` and validated ``Options``."""

    #: Unique name within its kind; this is what configs and the CLI refer to.
    name: ClassVar[str] = ""
    #: One line shown by ``rayrec plugins``.
    description: ClassVar[str] = ""
    #: Validated options; subclasses override with their own pydantic model.
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        if options is None:
            options = {}
        if isinstance(options, dict):
            options = self.Options(**options)
        elif not isinstance(options, self.Options):
            options = self.Options(**options.model_dump())
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


class FeatureExtractor(Component):
    """Turns raw item or user attributes into numeric features.

    ``extract`` takes records (dicts of raw fields, e.g. ``title``, ``categories``) and returns
    a float32 matrix of shape ``(len(records), dim)``. ``target`` says whether it applies to
    items or users.
    """

    target: ClassVar[str] = "item"  # "item" or "user"
    #: True when :meth:`encode_query` places free text in the same space as ``extract``'s
    #: item vectors; such an extractor powers ``POST /search``.
    supports_queries: ClassVar[bool] = False

    def extract(self, records: Sequence[dict[str, Any]]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def encode_query(self, text: str) -> np.ndarray:
        """``(dim,)`` float32 vector of a search query, comparable (cosine) with ``extract``'s rows."""
        raise NotImplementedError(f"feature extractor {self.name!r} does not encode search queries")


class Encoder(Component):
    """A tower factory: ``build(...)`` returns a ``torch.nn.Module``.

    ``kind`` is ``"user"`` for user towers and ``"item"`` for item towers; both are registered
    through ``register_encoders``.
    """

    kind: ClassVar[str] = "user"

    def build(self, **dims: Any):  # pragma: no cover - returns torch.nn.Module
        raise NotImplementedError


class UserEncoder(Encoder):
    """User tower: maps the user's recent item sequence to a vector.

    ``build(dim=..., max_len=..., num_items=...)`` returns a module whose
    ``forward(item_vectors: (B, L, D), mask: (B, L) bool) -> (B, L, D)`` encodes the sequence
    (left-padded, ``mask`` False on padding, most recent item last) into one vector per
    position. Position ``t`` may read only items ``<= t`` (causal): training predicts the next
    item at every position, and serving uses the last one. Because it only reads the current
    sequence, a new event changes the user vector without retraining.
    """

    kind: ClassVar[str] = "user"


class ItemEncoder(Encoder):
    """Item tower: maps item ids, categorical features and content vectors to ``(N, D)``."""

    kind: ClassVar[str] = "item"


class Candidate(BaseModel):
    """One scored item flowing through the scoring stage.

    ``score`` is the ranking score so far: the model's, unless a scorer changed it.
    ``explanation`` holds notes scorers add (``"popularity +0.069"``); the answer shows them
    as ``explanation.notes``.
    """

    item_id: str
    score: float
    explanation: list[str] = []


class ScoringContext(BaseModel):
    """What a scorer may look at besides the candidates."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    user_id: str | None = None
    history: list[str] = []  # the user's recent item ids, oldest first
    item_popularity: dict[str, float] = {}  # interactions per item in the training data
    #: Last-seen time per candidate (unix seconds): its latest feedback event received online
    #: (BaseStateStore.item_last_seen); items without one are absent, training data is not counted.
    item_timestamps: dict[str, float] = {}
    item_categories: dict[str, list[str]] = {}  # categories per item, where known
    now: float | None = None
    catalog: Any = None  # serving only: a rayrec.serving.stages.scoring.CatalogView of the live catalogue


class Scorer(Component):
    """Re-ranks the retrieved candidates (blend, boost, diversify) before the answer is cut to ``k``.

    ``rerank(candidates, context)`` receives the candidate pool best first and returns the
    candidates in the order to show them. That order is final: rayrec does not sort it. A
    scorer may drop candidates, but never brings back an item the user may not see. It may
    change ``Candidate.score`` (a later scorer sees the new value, and the answer reports it as
    ``rank_score``); the answer's ``score`` stays the model's. Notes appended to
    ``Candidate.explanation`` reach the answer as ``explanation.notes``.

    The first form, ``score(candidates, context)`` returning re-scored candidates that rayrec
    then sorts by score, still works; defining it warns (DeprecationWarning) with what to change.
    """

    def rerank(self, candidates: list[Candidate], context: ScoringContext) -> list[Candidate]:  # pragma: no cover
        raise NotImplementedError(f"scorer {self.name!r} implements neither rerank() nor score()")

    def score(self, candidates: list[Candidate], context: ScoringContext) -> list[Candidate]:
        """Deprecated form (see the class docstring); on a scorer written with ``rerank``, the same."""
        return self.rerank(candidates, context)

    @classmethod
    def sorts_by_score(cls) -> bool:
        """True for a scorer written in the deprecated ``score()`` form: rayrec sorts its output."""
        for klass in cls.__mro__:
            if klass is Scorer:
                return False
            if "rerank" in vars(klass):
                return False
            if "score" in vars(klass):
                return True
        return False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "score" in vars(cls) and cls.sorts_by_score():
            import warnings

            warnings.warn(
                f"{cls.__module__}.{cls.__qualname__} implements Scorer.score(), which is deprecated: rename it "
                "to rerank(candidates, context) and return the candidates in the order to show them, best "
                "first (e.g. sorted by your scores); rayrec keeps that order instead of sorting by "
                "Candidate.score, and answers report the model's score as score and yours as rank_score",
                DeprecationWarning, stacklevel=2)


class CandidateSource(Component):
    """Proposes item ids for a user beyond the embedding retrieval (e.g. new, trending).

    ``candidates(context, k)`` returns up to ``k`` candidates. At serving time
    ``context.catalog`` describes the live catalogue; the scoring stage adds proposed items
    that are allowed for the user to the retrieved pool and scores them with the model, so
    sources widen recall without bypassing the ranking.
    """

    def candidates(self, context: ScoringContext, k: int) -> list[Candidate]:  # pragma: no cover
        raise NotImplementedError


class FeedbackEvent(BaseModel):
    """One user-item event as ingested online."""

    user_id: str
    item_id: str
    event_type: str = "click"
    timestamp: float | None = None
    value: float | None = None
    event_id: str | None = None
    #: The ``impression_id`` of the /recommend answer that showed the item, when the client sent
    #: it: the event is then attributed to that answer's experiment arm and position.
    impression_id: str | None = None
    #: Set by rayrec before handlers see the event: True when this batch stored it, False when
    #: its ``event_id`` was already stored (a client's retry, or a repeat within the batch).
    #: None where unknown: before storing, or from a state store that does not say.
    new: bool | None = None


class FeedbackHandler(Component):
    """Called with each batch of accepted feedback events (after they are durable).

    The batch holds every accepted event, re-sent duplicates included. ``event.new`` tells
    them apart, so a counter should count only ``[e for e in events if e.new]``.
    """

    def handle(self, events: list[FeedbackEvent]) -> None:  # pragma: no cover
        raise NotImplementedError


class DataSource(Component):
    """Loads a dataset from a path.

    ``can_load(path)`` says whether this source understands ``path`` (a file or directory);
    ``load(path)`` returns a :class:`rayrec.schema.Dataset`.
    """

    def can_load(self, path: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def load(self, path: str):  # pragma: no cover - returns rayrec.schema.Dataset
        raise NotImplementedError


#: The component kinds defined here; ``COMPONENT_KINDS`` adds the state store's.
_BASES_HERE: dict[str, type[Component]] = {
    "feature_extractor": FeatureExtractor,
    "encoder": Encoder,
    "scorer": Scorer,
    "candidate_source": CandidateSource,
    "feedback_handler": FeedbackHandler,
    "data_source": DataSource,
}


def __getattr__(name: str) -> Any:
    """``COMPONENT_KINDS``, and ``StateStore``, the old name of the state-store interface.

    The state-store base is :class:`rayrec.state.BaseStateStore`, whose records and durability
    contract live in :mod:`rayrec.state.base` (built on this module), so both are looked up
    there when first asked for.
    """
    if name == "COMPONENT_KINDS":
        from rayrec.state.base import BaseStateStore

        kinds = {**_BASES_HERE, "state_store": BaseStateStore}
        globals()["COMPONENT_KINDS"] = kinds
        return kinds
    if name == "StateStore":
        import warnings

        from rayrec.state.base import BaseStateStore

        warnings.warn("rayrec.components.StateStore is now rayrec.state.BaseStateStore, the one state-store "
                      "interface: import and subclass that instead", DeprecationWarning, stacklevel=2)
        return BaseStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def options_schema(component: type[Component]) -> list[dict[str, Any]]:
    """Option names, types, defaults and descriptions of a component, for listings."""
    rows = []
    for field_name, field in component.Options.model_fields.items():
        rows.append(
            {
                "name": field_name,
                "type": getattr(field.annotation, "__name__", str(field.annotation)),
                "default": None if field.is_required() else field.default,
                "description": field.description or "",
            }
        )
    return rows
