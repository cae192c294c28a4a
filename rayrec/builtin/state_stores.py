"""Built-in state stores: the embedded SQLite store (``sqlite:///path/state.db``, the default)
and the networked Redis store (``redis://host:6379/0``; needs ``pip install 'rayrec[redis]'``)."""

from __future__ import annotations

from rayrec.hookspecs import hookimpl
from rayrec.state.redis import RedisStateStore
from rayrec.state.sqlite import SQLiteStateStore


@hookimpl
def register_state_stores(register):
    register(SQLiteStateStore)
    register(RedisStateStore)
