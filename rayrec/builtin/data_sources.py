"""Built-in data sources, registered through the same hook third-party plugins use.

Order matters: ``load_dataset`` picks the first source whose ``can_load`` accepts a path, so
the specific directory layouts come before the generic interactions file. The event log takes
state store URLs (``sqlite:///...``, ``redis://...``), which no file source accepts.
"""

from __future__ import annotations

from rayrec.data.interactions_file import InteractionsFileSource
from rayrec.data.movielens import MovieLens100K, MovieLensLatest
from rayrec.data.synthetic import SyntheticSource
from rayrec.hookspecs import hookimpl
from rayrec.state.event_log import EventLogSource


@hookimpl
def register_data_sources(register):
    register(MovieLens100K)
    register(MovieLensLatest)
    register(SyntheticSource)
    register(EventLogSource)
    register(InteractionsFileSource)
