"""The state-store interface serving talks to, and the records it exchanges.

A state store keeps everything that changes while the model is served:

* the **event log**: every accepted feedback event, durably, deduplicated by ``event_id``;
* the **per-user recent state**: the user's latest events (what the user tower reads next)
  and the items the user disliked (never recommended to them again);
* **erasures**: users whose data was deleted; their training history is ignored from then on;
* the **item catalogue**: items added, updated or deleted online, with a version counter
  that every scorer replica checks per request;
* the **model generations**: which model directory is live, so every replica of every stage
  serves the same model version (see :mod:`rayrec.serving.stages.generations`);
* the **experiments**: each A/B test's record, the impressions it served (which arm showed
  which items) and the feedback events attributed to them (see :mod:`rayrec.serving.experiments`).

Stores are components (kind ``state_store``), registered through ``register_state_stores``
and chosen by URL scheme: ``sqlite:///var/lib/rayrec/state.db`` picks the store named
``sqlite``. A plain path means SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Collection, Iterator, Sequence

from rayrec.components import Component, FeedbackEvent


@dataclass
class UserState:
    """What the store knows about one user right now."""

    user_id: str
    #: (item_id, event_type) of the user's most recent events, oldest first.
    recent: list[tuple[str, str]] = field(default_factory=list)
    #: Items the user disliked; never recommended to them again.
    disliked: set[str] = field(default_factory=set)
    #: True once the user was erased: their training history must be ignored.
    erased: bool = False


@dataclass
class AppendResult:
    """Outcome of :meth:`BaseStateStore.append_events`."""

    stored: int  # events newly written
    duplicates: int  # events whose event_id was already in the log (idempotent re-sends)
    #: Per event of the batch, in order: True if it was newly written, False if its
    #: ``event_id`` was already stored (a re-send, or a repeat earlier in the same batch).
    #: None from a store that does not say; serving then flags events only when the whole
    #: batch was new or the whole batch was duplicates.
    new: list[bool] | None = None


@dataclass
class CatalogChange:
    """One item added, updated or deleted online; ``version`` orders the changes."""

    item_id: str
    version: int
    deleted: bool
    record: dict[str, Any] = field(default_factory=dict)  # title, text, categories


@dataclass
class ModelGeneration:
    """A model directory registered for serving; ``generation`` increases by one per reload."""

    generation: int
    model_dir: str
    status: str  # "staged", "active", "arm" (serving an experiment's arm), "retired" or "failed"


@dataclass
class Impression:
    """One answer served to an experiment's arm: the items shown, best first."""

    impression_id: str
    experiment: str
    arm: str
    item_ids: list[str]


@dataclass
class AttributedEvent:
    """A feedback event that named an impression it followed, with where its item was shown."""

    event_id: str
    impression_id: str
    experiment: str
    arm: str
    item_id: str
    event_type: str
    position: int  # 0 = the first item of the impression


class BaseStateStore(Component):
    """The interface of every state store (component kind ``state_store``). Subclass it, set
    ``name`` to the URL scheme.

    Selected by URL: the scheme (``sqlite:///path/state.db``) is the registered ``name`` or
    one of ``schemes``; ``Options`` must accept a ``url`` field. Serving only talks to this
    interface, so a networked store (Redis) plugs in without touching the serving code.

    Every write is durable when the method returns: a caller may acknowledge the request.
    Implementations must be safe to use from several processes at once.
    """

    #: Extra URL schemes that select this store besides ``name`` (e.g. ``rediss``).
    schemes: ClassVar[tuple[str, ...]] = ()

    # -- events and user state -------------------------------------------------------------
    def append_events(
        self, events: Sequence[FeedbackEvent], dislike_types: Collection[str] = ()
    ) -> AppendResult:  # pragma: no cover - interface
        """Durably append ``events`` (all or none) and update each user's recent state.

        An event whose ``event_id`` is already stored is skipped (idempotent re-send); the
        result's ``new`` says which events were written. Events whose type is in
        ``dislike_types`` also mark the item disliked for that user. Each stored event also
        moves its item's :meth:`item_last_seen` time forward.
        """
        raise NotImplementedError

    def item_last_seen(self, item_ids: Collection[str]) -> dict[str, float]:
        """The time of the latest stored event of each of ``item_ids``, in unix seconds.

        An event's time is its ``timestamp``, or its arrival time when it had none. Items with no
        stored event are left out. This is what ``ScoringContext.item_timestamps`` holds. It
        counts only events fed back online, not the training data. It carries no user id, so
        erasing a user does not move it back. The default returns ``{}``: a store that keeps no
        such index gives recency-aware scorers no timestamps, and they add no recency boost.
        """
        return {}

    def user_state(self, user_id: str, limit: int) -> UserState:  # pragma: no cover
        """The user's ``limit`` most recent events (oldest first), dislikes and erasure flag."""
        raise NotImplementedError

    def erase_user(self, user_id: str) -> int:  # pragma: no cover
        """Delete all the user's events and state, and record the erasure; returns events deleted."""
        raise NotImplementedError

    def event_count(self, user_id: str | None = None) -> int:  # pragma: no cover
        """Events in the log, for one user or in total."""
        raise NotImplementedError

    # -- the event log as training data ----------------------------------------------------
    def iter_event_log(self, chunk_size: int = 10_000) -> Iterator[list[FeedbackEvent]]:
        """Every event in the log, in chunks of at most ``chunk_size``, each user's events in
        arrival order, with the stored time as ``timestamp``: what ``rayrec train
        --interactions <state URL>`` learns from (:mod:`rayrec.state.event_log`).

        An erased user's events are gone from the log (:meth:`erase_user` deletes them); a
        user erased while this runs may still show up, so readers ask :meth:`erased_users`
        afterwards. The default raises: a store that cannot list its log is no training source.
        """
        raise NotImplementedError(f"the {self.name!r} state store cannot list its event log for training")

    def erased_users(self) -> set[str]:
        """Every user erased so far (:meth:`erase_user`); training drops them from every input."""
        raise NotImplementedError(f"the {self.name!r} state store cannot list its erased users for training")

    # -- item catalogue --------------------------------------------------------------------
    def put_item(self, item_id: str, record: dict[str, Any]) -> int:  # pragma: no cover
        """Add or update an item's content; returns the new catalogue version."""
        raise NotImplementedError

    def delete_item(self, item_id: str) -> int:  # pragma: no cover
        """Mark an item deleted; returns the new catalogue version."""
        raise NotImplementedError

    def catalog_version(self) -> int:  # pragma: no cover
        """The current catalogue version (0 when nothing changed yet); cheap, read per request."""
        raise NotImplementedError

    def catalog_changes(self, since_version: int) -> list[CatalogChange]:  # pragma: no cover
        """The latest change of every item changed after ``since_version``, in version order."""
        raise NotImplementedError

    # -- model generations -----------------------------------------------------------------
    def stage_model(self, model_dir: str) -> int:  # pragma: no cover
        """Register ``model_dir`` as a new generation (not live yet); returns its number."""
        raise NotImplementedError

    def activate_model(self, generation: int) -> None:  # pragma: no cover
        """Make ``generation`` the live one; requests started afterwards use it."""
        raise NotImplementedError

    def fail_model(self, generation: int) -> None:  # pragma: no cover
        """Mark a staged generation as failed (it never goes live)."""
        raise NotImplementedError

    def model_generation(self, generation: int | None = None) -> ModelGeneration | None:  # pragma: no cover
        """The given generation, or the live one when ``generation`` is None (None if none)."""
        raise NotImplementedError

    def set_model_status(self, generation: int, status: str) -> None:  # pragma: no cover
        """Set a generation's status (``arm`` while an experiment serves it, ``retired`` after)."""
        raise NotImplementedError

    # -- experiments -----------------------------------------------------------------------
    def save_experiment(self, record: dict[str, Any]) -> None:  # pragma: no cover
        """Create or replace the experiment ``record["name"]`` (a JSON-able dict)."""
        raise NotImplementedError

    def experiments(self) -> list[dict[str, Any]]:  # pragma: no cover
        """Every experiment's record, oldest first."""
        raise NotImplementedError

    def experiment(self, name: str) -> dict[str, Any] | None:
        return next((record for record in self.experiments() if record["name"] == name), None)

    def record_impression(self, impression: Impression) -> None:  # pragma: no cover
        """Durably store one served answer of an experiment (its id is unique)."""
        raise NotImplementedError

    def impressions(self, impression_ids: Collection[str]) -> dict[str, Impression]:  # pragma: no cover
        """The stored impressions among ``impression_ids``, by id (unknown ids are left out)."""
        raise NotImplementedError

    def record_attributed_events(self, events: Sequence[AttributedEvent]) -> int:  # pragma: no cover
        """Durably store ``events`` (all or none); one whose ``event_id`` is stored already is skipped
        (a re-send). Returns how many were new."""
        raise NotImplementedError

    def impression_counts(self, experiment: str) -> dict[str, int]:  # pragma: no cover
        """Impressions stored per arm of ``experiment``."""
        raise NotImplementedError

    def attributed_events(self, experiment: str) -> list[AttributedEvent]:  # pragma: no cover
        """Every event attributed to an impression of ``experiment``."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        """Release connections; the store may be used again afterwards (it reconnects)."""

    # -- shared helpers --------------------------------------------------------------------
    def ensure_model(self, model_dir: str) -> ModelGeneration:
        """Make ``model_dir`` live unless it already is; used when an app starts."""
        live = self.model_generation()
        if live is not None and live.model_dir == model_dir:
            return live
        generation = self.stage_model(model_dir)
        self.activate_model(generation)
        result = self.model_generation(generation)
        assert result is not None
        return result
