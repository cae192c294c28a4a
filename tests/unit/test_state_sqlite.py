"""The SQLite state store: durability across processes, idempotency, erasure, ordering."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rayrec.components import FeedbackEvent
from rayrec.errors import ConfigError, UnknownComponentError
from rayrec.state import open_state_store
from rayrec.state.sqlite import SQLiteStateStore, sqlite_path_from_url


@pytest.fixture
def store(tmp_path):
    s = open_state_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def ev(user, item, kind="click", event_id=None):
    return FeedbackEvent(user_id=user, item_id=item, event_type=kind, event_id=event_id)


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


def test_recent_events_are_oldest_first_and_bounded(tmp_path):
    s = open_state_store(str(tmp_path / "s.db"), recent_limit=5)
    for i in range(8):
        s.append_events([ev("u", f"i{i}")])
    state = s.user_state("u", limit=100)
    assert [item for item, _ in state.recent] == ["i3", "i4", "i5", "i6", "i7"]
    assert [item for item, _ in s.user_state("u", limit=2).recent] == ["i6", "i7"]
    assert s.event_count("u") == 8  # the log keeps everything; only the recent state is bounded


def test_resending_an_event_id_is_idempotent(store):
    first = store.append_events([ev("u", "a", event_id="e1"), ev("u", "b", event_id="e2")])
    again = store.append_events([ev("u", "a", event_id="e1"), ev("u", "c", event_id="e3")])
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert [i for i, _ in store.user_state("u", 10).recent] == ["a", "b", "c"]
    # a duplicate inside one batch is also stored once; events without an id always append
    store.append_events([ev("v", "x", event_id="d"), ev("v", "x", event_id="d"), ev("v", "y"), ev("v", "y")])
    assert store.event_count("v") == 3


def test_dislikes_are_remembered_beyond_the_recent_window(tmp_path):
    s = open_state_store(str(tmp_path / "s.db"), recent_limit=2)
    s.append_events([ev("u", "bad", "dislike")], dislike_types={"dislike"})
    s.append_events([ev("u", f"i{i}") for i in range(5)], dislike_types={"dislike"})
    state = s.user_state("u", 10)
    assert state.disliked == {"bad"}
    assert "bad" not in [i for i, _ in state.recent]


def test_erase_user_deletes_events_and_records_the_erasure(store):
    store.append_events([ev("u", "a"), ev("u", "b", "dislike"), ev("other", "a")], dislike_types={"dislike"})
    assert store.erase_user("u") == 2
    state = store.user_state("u", 10)
    assert state.recent == [] and state.disliked == set() and state.erased
    assert store.event_count("u") == 0 and store.event_count("other") == 1
    assert store.events("u") == []
    assert not store.user_state("other", 10).erased


def test_catalog_versions_and_changes(store):
    assert store.catalog_version() == 0
    v1 = store.put_item("new", {"title": "New", "categories": ["Comedy"]})
    v2 = store.delete_item("old")
    v3 = store.put_item("new", {"title": "Newer"})
    assert (v1, v2, v3) == (1, 2, 3) and store.catalog_version() == 3
    changes = store.catalog_changes(0)
    assert [(c.item_id, c.deleted, c.version) for c in changes] == [("old", True, 2), ("new", False, 3)]
    assert changes[1].record == {"title": "Newer"}
    assert store.catalog_changes(3) == []


def test_model_generations(store):
    assert store.model_generation() is None
    first = store.ensure_model("/models/a")
    assert store.ensure_model("/models/a") == first  # same dir on restart: no new generation
    staged = store.stage_model("/models/b")
    assert store.model_generation().generation == first.generation  # staged is not live
    store.activate_model(staged)
    assert store.model_generation().model_dir == "/models/b"
    assert store.model_generation(first.generation).status == "retired"
    bad = store.stage_model("/models/bad")
    store.fail_model(bad)
    assert store.model_generation(bad).status == "failed"
    assert store.model_generation().generation == staged


def _writer(path: str, worker: int, batches: int) -> None:
    s = open_state_store(path)
    for b in range(batches):
        events = [ev(f"user{worker}", f"item{b}-{j}", event_id=f"w{worker}-b{b}-e{j}") for j in range(5)]
        # every batch re-sends the previous batch's last event: idempotent under concurrency
        if b:
            events.append(ev(f"user{worker}", f"item{b - 1}-4", event_id=f"w{worker}-b{b - 1}-e4"))
        s.append_events(events)
    s.close()


def test_concurrent_writers_from_several_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.db")
    open_state_store(path).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    s = open_state_store(path)
    assert s.event_count() == 4 * 40 * 5
    for w in range(4):
        recent = [item for item, _ in s.user_state(f"user{w}", 1000).recent]
        assert recent == [f"item{b}-{j}" for b in range(40) for j in range(5)]


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
