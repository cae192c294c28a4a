"""Built-in state stores: the embedded SQLite store (``sqlite:///path/state.db``)."""

from __future__ import annotations

from rayrec.hookspecs import hookimpl
from rayrec.state.sqlite import SQLiteStateStore


@hookimpl
def register_state_stores(register):
    register(SQLiteStateStore)
