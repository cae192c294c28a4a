"""What only the SQLite store does: URLs, WAL and fsync settings, crash safety per setting.

The contract every store shares (idempotency, erasure, ordering, catalogue, generations,
concurrent writers) is tested against SQLite and Redis alike in test_state_stores.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rayrec.errors import ConfigError, UnknownComponentError
from rayrec.state import open_state_store
from rayrec.state.sqlite import SQLiteStateStore, sqlite_path_from_url


def test_url_selects_sqlite_store_and_wal_mode(tmp_path):
    s = open_state_store(f"sqlite:///{tmp_path}/a.db?synchronous=normal")
    assert isinstance(s, SQLiteStateStore)
    assert s.options.synchronous == "normal"
    conn = s._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert isinstance(open_state_store(str(tmp_path / "b.db")), SQLiteStateStore)  # plain path
    full = open_state_store(str(tmp_path / "c.db"))
    assert full._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL by default


def test_url_errors_name_the_problem(tmp_path):
    with pytest.raises(UnknownComponentError, match="no state store for scheme 'bogus'.*sqlite"):
        open_state_store("bogus://host/db")
    with pytest.raises(ConfigError, match="does not exist"):
        open_state_store(f"sqlite:///{tmp_path}/missing/dir/state.db")
    assert sqlite_path_from_url("sqlite:///rel/state.db") == "rel/state.db"
    assert sqlite_path_from_url("sqlite:////abs/state.db") == "/abs/state.db"


_CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from rayrec.components import FeedbackEvent
    from rayrec.state import open_state_store
    store = open_state_store(sys.argv[1])
    i = 0
    while True:
        store.append_events([FeedbackEvent(user_id="u", item_id=f"i{i}", event_id=f"e{i}")])
        print(f"e{i}", flush=True)  # acknowledged only after append_events returned
        i += 1
    """
)


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_acknowledged_events_survive_a_killed_process(tmp_path, synchronous):
    url = f"sqlite:///{tmp_path}/crash.db?synchronous={synchronous}"
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, url], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        deadline = time.time() + 60
        while len(acknowledged) < 50 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown, no checkpoint
        proc.wait()
    assert len(acknowledged) == 50
    s = open_state_store(url)
    logged = {e.event_id for e in s.events("u")}
    assert set(acknowledged) <= logged


def test_store_is_registered_as_a_component():
    from rayrec import plugins

    assert "sqlite" in plugins.registry().names("state_store")
    assert plugins.registry().plugin_of("state_store", "sqlite") == "rayrec.builtin.state_stores"


def test_a_file_from_before_item_last_seen_gets_it_from_its_events(tmp_path):
    from rayrec.components import FeedbackEvent

    path = str(tmp_path / "old.db")
    store = open_state_store(path)
    store.append_events([FeedbackEvent(user_id="u", item_id="a", timestamp=t) for t in (10.0, 30.0)])
    conn = store._connection()
    conn.execute("DROP TABLE item_last_seen")  # what a file written by an earlier rayrec lacks
    store.close()
    assert open_state_store(path).item_last_seen(["a"]) == {"a": 30.0}
