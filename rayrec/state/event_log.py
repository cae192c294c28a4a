"""A state store's event log as training data: ``--interactions sqlite:///path/state.db``.

Everything ``/feedback`` acknowledged becomes interactions like the rows of a file, so the
next model learns from it (``rayrec train --interactions data.csv --interactions
sqlite:///var/lib/rayrec/state.db``). Serving's rules carry over, so the model learns what
serving shows:

- an event of an ignored type (``skip``: weight 0 in serving's default event weights) is no
  interaction and is left out;
- a dislike (``dislike``: a negative weight) is no interaction either, and the user's other
  events on that item, in every input, are left out with it (serving drops a disliked item
  from the user's sequence for good);
- an erased user (``DELETE /users/{id}``) is dropped from every input, events sent after the
  erasure included: their events are gone from the log already, and their rows in the other
  inputs go too (:func:`rayrec.data.load_datasets`).

Timestamps are the stored event times in whole unix seconds; each user's events keep their
arrival order.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import DataSource
from rayrec.errors import DataError
from rayrec.schema import Dataset, Interactions, LoadReport

#: Events read from the store at a time.
CHUNK_EVENTS = 50_000


class EventLogSource(DataSource):
    """The event log of any registered state store, named by its URL."""

    name = "event-log"
    description = ("A state store's event log (sqlite:///path/state.db, redis://host:port/db): what /feedback "
                   "stored, without skips, dislikes and erased users.")

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ignored_event_types: list[str] = Field(
            ["skip"], description="Event types that are no interaction (weight 0 in serving's default weights).")
        dislike_event_types: list[str] = Field(
            ["dislike"], description="Event types that are dislikes: the user's events on that item are left out.")

    def can_load(self, path: str) -> bool:
        from rayrec.state import store_class

        return "://" in path and store_class(path) is not None

    def load(self, path: str) -> Dataset:
        from rayrec.state import open_state_store

        if urlparse(path).scheme == "sqlite":
            from rayrec.state.sqlite import sqlite_path_from_url

            file = Path(sqlite_path_from_url(path.split("?", 1)[0]))
            if not file.is_file():  # opening it would create an empty store
                raise DataError("no state store file here (the path after sqlite:/// is relative, "
                                "after sqlite://// absolute)", path=str(file))
        store = open_state_store(path)
        try:
            chunks = list(store.iter_event_log(CHUNK_EVENTS))
            erased = frozenset(store.erased_users())  # after the events: an erasure meanwhile still counts
        finally:
            store.close()
        events = [event for chunk in chunks for event in chunk]
        ignored, dislikes = set(self.options.ignored_event_types), set(self.options.dislike_event_types)
        disliked = frozenset((e.user_id, e.item_id) for e in events if e.event_type in dislikes)
        kept = [e for e in events if e.event_type not in ignored and e.event_type not in dislikes]
        report = LoadReport(rows_read=len(events), events_ignored=len(events) - len(kept))
        interactions = Interactions(
            user_id=np.array([e.user_id for e in kept], dtype=object),
            item_id=np.array([e.item_id for e in kept], dtype=object),
            timestamp=np.array([math.floor(e.timestamp) for e in kept], dtype=np.int64),
            event_type=np.array([e.event_type for e in kept], dtype=object),
            value=np.array([np.nan if e.value is None else e.value for e in kept], dtype=np.float32),
        )
        return Dataset(name="event-log", interactions=interactions, report=report, erased_users=erased,
                       disliked=disliked)
