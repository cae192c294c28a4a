"""The state-store contract, run against every built-in store: SQLite and Redis.

Durability, idempotency, erasure, ordering, the catalogue and model generations must behave
the same whichever store is configured. The Redis tests start their own ``redis-server``
(AOF on, fsync on every write, no RDB snapshots) on a free port in a temporary directory and
stop it by PID; they are skipped, with a message, when ``redis-server`` or the ``redis``
client is not installed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from rayrec.components import FeedbackEvent
from rayrec.state import open_state_store
from rayrec.testing import RedisServer, free_port, redis_unavailable

@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """A URL of an empty store of each kind (Redis: a fresh key prefix on the shared server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def store(store_url):
    s = open_state_store(store_url)
    yield s
    s.close()


def ev(user, item, kind="click", event_id=None):
    return FeedbackEvent(user_id=user, item_id=item, event_type=kind, event_id=event_id)


def test_recent_events_are_oldest_first_and_bounded(store_url):
    s = open_state_store(store_url, recent_limit=5)
    for i in range(8):
        s.append_events([ev("u", f"i{i}")])
    state = s.user_state("u", limit=100)
    assert [item for item, _ in state.recent] == ["i3", "i4", "i5", "i6", "i7"]
    assert [item for item, _ in s.user_state("u", limit=2).recent] == ["i6", "i7"]
    assert s.event_count("u") == 8  # the log keeps everything; only the recent state is bounded
    assert s.user_state("nobody", limit=10).recent == []


def test_resending_an_event_id_is_idempotent(store):
    first = store.append_events([ev("u", "a", event_id="e1"), ev("u", "b", event_id="e2")])
    again = store.append_events([ev("u", "a", event_id="e1"), ev("u", "c", event_id="e3")])
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert [i for i, _ in store.user_state("u", 10).recent] == ["a", "b", "c"]
    # a duplicate inside one batch is also stored once; events without an id always append
    store.append_events([ev("v", "x", event_id="d"), ev("v", "x", event_id="d"), ev("v", "y"), ev("v", "y")])
    assert store.event_count("v") == 3
    assert store.event_count() == 6


def test_append_says_which_events_were_new(store):
    store.append_events([ev("u", "a", event_id="n1")])
    result = store.append_events([ev("u", "a", event_id="n1"), ev("u", "b", event_id="n2"),
                                  ev("u", "b", event_id="n2"), ev("u", "c")])
    assert result.new == [False, True, False, True]  # a re-send, new, repeated in the batch, no id


def test_item_last_seen_is_the_latest_event_time_per_item(store):
    def at(item, timestamp, event_id=None):
        return FeedbackEvent(user_id="u", item_id=item, timestamp=timestamp, event_id=event_id)

    store.append_events([at("a", 100.0), at("a", 300.5), at("a", 200.0), at("b", 50.0, event_id="b1")])
    store.append_events([at("b", 999.0, event_id="b1")])  # a re-send changes nothing
    assert store.item_last_seen(["a", "b", "never"]) == {"a": 300.5, "b": 50.0}
    assert store.item_last_seen([]) == {}
    store.erase_user("u")  # holds no user id: stays
    assert store.item_last_seen(["a"]) == {"a": 300.5}


def test_events_keep_their_fields(store):
    event = FeedbackEvent(user_id="ü-1", item_id="i/1", event_type="rating", timestamp=1700000000.125, value=4.5,
                          event_id="r-1")
    store.append_events([event])
    assert store.events("ü-1") == [event]


def test_dislikes_are_remembered_beyond_the_recent_window(store_url):
    s = open_state_store(store_url, recent_limit=2)
    s.append_events([ev("u", "bad", "dislike")], dislike_types={"dislike"})
    s.append_events([ev("u", f"i{i}") for i in range(5)], dislike_types={"dislike"})
    state = s.user_state("u", 10)
    assert state.disliked == {"bad"}
    assert "bad" not in [i for i, _ in state.recent]


def test_erase_user_deletes_events_and_records_the_erasure(store):
    store.append_events([ev("u", "a", event_id="ua"), ev("u", "b", "dislike"), ev("other", "a")],
                        dislike_types={"dislike"})
    assert store.erase_user("u") == 2
    state = store.user_state("u", 10)
    assert state.recent == [] and state.disliked == set() and state.erased
    assert store.event_count("u") == 0 and store.event_count("other") == 1 and store.event_count() == 1
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
    assert [c.item_id for c in store.catalog_changes(2)] == ["new"]


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
    assert store.model_generation(999) is None
    with pytest.raises(KeyError):
        store.activate_model(999)


def _writer(url: str, worker: int, batches: int) -> None:
    s = open_state_store(url)
    for b in range(batches):
        events = [ev(f"user{worker}", f"item{b}-{j}", event_id=f"w{worker}-b{b}-e{j}") for j in range(5)]
        # every batch re-sends the previous batch's last event: idempotent under concurrency
        if b:
            events.append(ev(f"user{worker}", f"item{b - 1}-4", event_id=f"w{worker}-b{b - 1}-e4"))
        s.append_events(events)
    s.close()


def test_concurrent_writers_from_several_processes_lose_nothing(store_url):
    open_state_store(store_url).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(store_url, w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    s = open_state_store(store_url)
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


def _acknowledged_by_killed_writer(url: str, count: int = 50, kill=None) -> list[str]:
    """Run a writer that prints each acknowledged event id; SIGKILL it (or call ``kill``) after ``count``."""
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, url], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    acknowledged = []
    try:
        deadline = time.time() + 60
        while len(acknowledged) < count and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        if kill is not None:
            kill()  # e.g. the store's server, while the writer is still writing
            acknowledged += [line.strip() for line in proc.stdout if line.strip()]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown
        proc.wait()
    return acknowledged


def test_acknowledged_events_survive_a_killed_writer(store_url):
    acknowledged = _acknowledged_by_killed_writer(store_url)
    assert len(acknowledged) == 50
    logged = {e.event_id for e in open_state_store(store_url).events("u")}
    assert set(acknowledged) <= logged


def test_acknowledged_events_survive_a_killed_redis_server(tmp_path):
    """kill -9 of redis-server itself mid-ingest: after a restart from the AOF, every event
    the writer saw acknowledged is there."""
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    server = RedisServer(tmp_path).start()
    try:
        acknowledged = _acknowledged_by_killed_writer(server.url, count=200, kill=lambda: server.stop(signal.SIGKILL))
        assert len(acknowledged) >= 200
        server.start()
        store = open_state_store(server.url)
        logged = {e.event_id for e in store.events("u")}
        missing = set(acknowledged) - logged
        assert not missing, f"{len(missing)} acknowledged events lost"
        assert store.event_count() == len(logged)
        store.close()
    finally:
        server.stop()


def test_both_stores_are_registered_as_components():
    from rayrec import plugins

    names = plugins.registry().names("state_store")
    assert {"sqlite", "redis"} <= set(names)
    assert plugins.registry().plugin_of("state_store", "redis") == "rayrec.builtin.state_stores"


def test_redis_url_options_and_errors():
    from rayrec.errors import ConfigError

    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'rayrec[redis]')")
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        open_state_store(f"redis://:secret@127.0.0.1:{port}/0")
    try:
        open_state_store(f"redis://:secret@127.0.0.1:{port}/0")
    except ConfigError as exc:
        assert "secret" not in str(exc)  # the password never appears in messages


def test_the_event_log_lists_every_stored_event_and_the_erased_users(store):
    events = [FeedbackEvent(user_id=f"u{i % 3}", item_id=f"i{i}", event_type="click", timestamp=1000.0 + i,
                            value=None if i % 2 else 1.5, event_id=f"e{i}") for i in range(7)]
    store.append_events(events)
    store.append_events([events[0]])  # a re-send is not logged twice
    store.append_events([ev("gone", "x"), ev("gone", "y")])
    store.erase_user("gone")
    chunks = list(store.iter_event_log(chunk_size=2))
    assert all(1 <= len(chunk) <= 2 for chunk in chunks)
    logged = [event for chunk in chunks for event in chunk]
    assert sorted(logged, key=lambda e: e.event_id) == events  # every field back, each event once
    for user in ("u0", "u1", "u2"):  # each user's events in arrival order
        assert [e.event_id for e in logged if e.user_id == user] == [e.event_id for e in events if e.user_id == user]
    assert store.erased_users() == {"gone"}


# -- experiments: impressions and attributed events --------------------------------------------
def test_experiment_records_impressions_and_attributed_events_survive_a_reopen(store_url):
    from rayrec.state.base import AttributedEvent, Impression

    s = open_state_store(store_url)
    s.save_experiment({"name": "ab", "status": "running", "arms": {"A": {}, "B": {}}})
    s.save_experiment({"name": "ab", "status": "stopped", "arms": {"A": {}, "B": {}}})  # replaced, not added
    s.save_experiment({"name": "later", "status": "running", "arms": {}})
    s.record_impression(Impression("imp-1", "ab", "A", ["x", "y", "z"]))
    s.record_impression(Impression("imp-2", "ab", "B", ["y"]))
    s.record_impression(Impression("imp-3", "ab", "A", []))
    click = AttributedEvent("e1", "imp-1", "ab", "A", "y", "click", 1)
    assert s.record_attributed_events([click, AttributedEvent("e2", "imp-2", "ab", "B", "y", "purchase", 0)]) == 2
    assert s.record_attributed_events([click]) == 0  # a re-sent event is attributed once
    s.close()

    reopened = open_state_store(store_url)
    assert [r["name"] for r in reopened.experiments()] == ["ab", "later"]
    assert reopened.experiment("ab")["status"] == "stopped"
    assert reopened.experiment("nope") is None
    found = reopened.impressions(["imp-1", "imp-2", "unknown"])
    assert sorted(found) == ["imp-1", "imp-2"] and found["imp-1"].item_ids == ["x", "y", "z"]
    assert reopened.impression_counts("ab") == {"A": 2, "B": 1}
    assert reopened.impression_counts("later") == {}
    events = sorted(reopened.attributed_events("ab"), key=lambda e: e.event_id)
    assert [(e.arm, e.item_id, e.event_type, e.position) for e in events] == [("A", "y", "click", 1),
                                                                              ("B", "y", "purchase", 0)]
    reopened.close()


def test_an_arm_generation_keeps_its_status_until_retired(store):
    live = store.ensure_model("/models/a")
    arm = store.stage_model("/models/b")
    store.set_model_status(arm, "arm")
    assert store.model_generation(arm).status == "arm"
    assert store.model_generation().generation == live.generation  # an arm never becomes live by itself
    store.set_model_status(arm, "retired")
    assert store.model_generation(arm).status == "retired"
