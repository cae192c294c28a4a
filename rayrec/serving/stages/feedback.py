"""The feedback stage: validate, store durably, update user state, notify plugins."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Callable, Sequence

from rayrec.components import FeedbackEvent, FeedbackHandler
from rayrec.serving.stages.errors import RequestError
from rayrec.state.base import AppendResult, AttributedEvent, BaseStateStore, Impression

logger = logging.getLogger(__name__)


def flag_new(events: list[FeedbackEvent], result: AppendResult) -> list[FeedbackEvent]:
    """The events with ``new`` set from the store's answer (see ``AppendResult.new``)."""
    flags: list[bool | None]
    if result.new is not None and len(result.new) == len(events):
        flags = list(result.new)
    elif result.duplicates == 0:
        flags = [True] * len(events)
    elif result.stored == 0:
        flags = [False] * len(events)
    else:  # a store that reports only counts, for a mixed batch: not knowable here
        flags = [None] * len(events)
    return [event.model_copy(update={"new": flag}) for event, flag in zip(events, flags)]


class FeedbackLogic:
    """Accepts batches of events; when :meth:`ingest` returns, they are on disk.

    Plugins run *after* the events are durable, with every accepted event, re-sends included;
    each event's ``new`` says whether this batch stored it. A failing handler or hook is logged and does
    not fail the request: the client must not re-send events that are already stored.
    """

    def __init__(
        self,
        store: BaseStateStore,
        event_weights: dict[str, float],
        handlers: Sequence[FeedbackHandler] = (),
        on_ingested: Callable[[list[FeedbackEvent]], None] | None = None,
        max_batch: int = 1000,
    ) -> None:
        self.store = store
        self.event_weights = dict(event_weights)
        self.dislike_types = {name for name, weight in self.event_weights.items() if weight < 0}
        self.handlers = list(handlers)
        self.on_ingested = on_ingested
        self.max_batch = max_batch

    def validate(self, events: Sequence[FeedbackEvent]) -> None:
        if not events:
            raise RequestError("events", "at least one event is required")
        if len(events) > self.max_batch:
            raise RequestError("events", f"{len(events)} events in one batch; at most {self.max_batch} are accepted")
        known = ", ".join(sorted(self.event_weights))
        for i, event in enumerate(events):
            if not event.user_id:
                raise RequestError(f"events[{i}].user_id", "must not be empty")
            if not event.item_id:
                raise RequestError(f"events[{i}].item_id", "must not be empty")
            if event.event_type not in self.event_weights:
                raise RequestError(f"events[{i}].event_type", f"unknown event type {event.event_type!r}; known: {known}")
            if event.timestamp is not None and not math.isfinite(event.timestamp):
                raise RequestError(f"events[{i}].timestamp", "must be a finite number of unix seconds")
            if event.value is not None and not math.isfinite(event.value):
                raise RequestError(f"events[{i}].value", "must be a finite number")

    def _shown_impressions(self, events: Sequence[FeedbackEvent]) -> dict[str, Impression]:
        """The impressions the events name; an id that was never served is refused."""
        wanted = {event.impression_id for event in events if event.impression_id}
        if not wanted:
            return {}
        found = self.store.impressions(wanted)
        for i, event in enumerate(events):
            if event.impression_id and event.impression_id not in found:
                raise RequestError(f"events[{i}].impression_id",
                                   f"unknown impression {event.impression_id!r} (send the impression_id a "
                                   "/recommend answer carried)")
        return found

    @staticmethod
    def attributions(events: Sequence[FeedbackEvent], shown: dict[str, Impression]) -> list[AttributedEvent]:
        """The newly stored events that name an impression which showed their item, with its position.
        An event on an item the impression did not show stays a plain event (nothing to attribute)."""
        attributed = []
        for event in events:
            impression = shown.get(event.impression_id or "")
            if impression is None or event.new is False or event.item_id not in impression.item_ids:
                continue
            attributed.append(AttributedEvent(
                event_id=event.event_id or uuid.uuid4().hex, impression_id=impression.impression_id,
                experiment=impression.experiment, arm=impression.arm, item_id=event.item_id,
                event_type=event.event_type, position=impression.item_ids.index(event.item_id)))
        return attributed

    def ingest(self, events: Sequence[FeedbackEvent]) -> dict[str, int]:
        events = list(events)
        self.validate(events)
        shown = self._shown_impressions(events)
        result = self.store.append_events(events, dislike_types=self.dislike_types)
        events = flag_new(events, result)
        # After the events: a crash in between loses an attribution, never an acknowledged event.
        attributed = self.store.record_attributed_events(self.attributions(events, shown)) if shown else None
        for handler in self.handlers:
            try:
                handler.handle(events)
            except Exception:
                logger.exception("feedback handler %r failed (the events are stored)", handler.name)
        if self.on_ingested is not None:
            try:
                self.on_ingested(events)
            except Exception:
                logger.exception("a feedback_ingested hook failed (the events are stored)")
        answer = {"accepted": len(events), "stored": result.stored, "duplicates": result.duplicates}
        if attributed is not None:  # only when the events named impressions
            answer["attributed"] = attributed
        return answer

    def erase_user(self, user_id: str) -> dict[str, object]:
        if not user_id:
            raise RequestError("user_id", "must not be empty")
        return {"user_id": user_id, "erased_events": self.store.erase_user(user_id)}
