"""The embedded default state store: one SQLite file in WAL mode, no server needed.

Durability: every write method commits before it returns, and the journal is WAL with
``synchronous=FULL`` by default, so each commit fsyncs the WAL. An acknowledged event
therefore survives a crash of the process *and* of the machine (power loss). With
``?synchronous=normal`` a WAL commit is not fsynced at once: it still survives a crash of
the process (the WAL lives in the OS page cache and is replayed on the next open), but the
last transactions may be lost on power failure. FULL costs one fsync per feedback batch,
which is cheap next to an HTTP request, so it is the default.

Several processes (one per Serve replica) share the file: WAL lets readers run while one
writer commits; writers take the lock up front (``BEGIN IMMEDIATE``) so two writers never
deadlock upgrading a read lock; ``busy_timeout`` makes a writer wait for the lock instead of
failing; transactions are short (one feedback batch, one item). Readers never block.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Sequence
from urllib.parse import parse_qs, urlparse

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import FeedbackEvent
from rayrec.errors import ConfigError
from rayrec.state.base import (
    AppendResult,
    AttributedEvent,
    BaseStateStore,
    CatalogChange,
    Impression,
    ModelGeneration,
    UserState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    value REAL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS user_recent (
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_dislikes (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_last_seen (
    item_id TEXT PRIMARY KEY,
    timestamp REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erased_users (
    user_id TEXT PRIMARY KEY,
    erased_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    item_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS catalog_by_version ON catalog (version);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_generations (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    model_dir TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS impressions (
    impression_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    item_ids TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_by_experiment ON impressions (experiment, arm);
CREATE TABLE IF NOT EXISTS attributed_events (
    event_id TEXT PRIMARY KEY,
    impression_id TEXT NOT NULL,
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    position INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attributed_by_experiment ON attributed_events (experiment);
"""


#: Ids bound per ``IN (...)`` query (SQLite allows 999 variables in builds before 3.32).
_IDS_PER_QUERY = 900


def sqlite_path_from_url(url: str) -> str:
    """The file path of a state URL, following SQLAlchemy's convention.

    ``sqlite:///state.db`` is relative to the working directory, ``sqlite:////var/x.db`` is
    absolute; a URL without a scheme is taken as a plain path.
    """
    if "://" not in url:
        return url
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ConfigError(f"state URL {url!r}: expected the sqlite:// scheme")
    if parsed.netloc:
        raise ConfigError(f"state URL {url!r}: use three slashes, sqlite:///relative.db or sqlite:////abs/path.db")
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not path:
        raise ConfigError(f"state URL {url!r}: no file path (use sqlite:///path/to/state.db)")
    return path


class SQLiteStateStore(BaseStateStore):
    """Event log, user state and item catalogue in one SQLite file (WAL, fsync per commit)."""

    name = "sqlite"
    description = "Embedded SQLite file in WAL mode; safe for several replicas on one machine."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str = Field(description="sqlite:///path/to/state.db, or a plain file path.")
        synchronous: Literal["full", "normal"] = Field(
            "full", description="full: fsync each commit (survives power loss); normal: survives process crashes."
        )
        busy_timeout_ms: int = Field(10_000, ge=0, description="How long a writer waits for the lock.")
        recent_limit: int = Field(500, ge=1, description="Recent events kept per user for the user tower.")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SQLiteStateStore":
        query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()} if "://" in url else {}
        base = url.split("?", 1)[0]
        return cls({"url": base, **query, **options})

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.path = sqlite_path_from_url(self.options.url)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._connection()  # fail fast on a bad path

    # -- connection ------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        # A connection must never cross a fork: reconnect in a child process.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        parent = Path(self.path).parent
        if not parent.exists():
            raise ConfigError(f"state store {self.path!r}: directory {str(parent)!r} does not exist")
        conn = sqlite3.connect(
            self.path,
            timeout=self.options.busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.options.busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"state store {self.path!r}: cannot enable WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous = {self.options.synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = OFF")
        with self._write(conn):
            had_last_seen = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'item_last_seen'").fetchone()
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if not had_last_seen:  # a file written before the table existed: index its events once
                conn.execute("INSERT OR REPLACE INTO item_last_seen (item_id, timestamp) "
                             "SELECT item_id, MAX(timestamp) FROM events GROUP BY item_id")
        self._conn = conn
        self._pid = os.getpid()
        return conn

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = conn or self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot for all the reads inside
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_conn"] = None
        state["_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @staticmethod
    def _bump(conn: sqlite3.Connection, counter: str) -> int:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (counter,),
        )
        return conn.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()[0]

    # -- events and user state -------------------------------------------------------------
    def append_events(
        self, events: Sequence[FeedbackEvent], dislike_types: Collection[str] = ()
    ) -> AppendResult:
        now = time.time()
        stored = 0
        new: list[bool] = []
        touched: set[str] = set()
        with self._write() as conn:
            for event in events:
                timestamp = event.timestamp if event.timestamp is not None else now
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO events "
                    "(event_id, user_id, item_id, event_type, timestamp, value, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.event_id,
                        event.user_id,
                        event.item_id,
                        event.event_type,
                        timestamp,
                        event.value,
                        now,
                    ),
                )
                new.append(cursor.rowcount == 1)
                if cursor.rowcount == 0:  # event_id already in the log
                    continue
                stored += 1
                conn.execute(
                    "INSERT INTO item_last_seen (item_id, timestamp) VALUES (?, ?) "
                    "ON CONFLICT(item_id) DO UPDATE SET timestamp = MAX(timestamp, excluded.timestamp)",
                    (event.item_id, timestamp),
                )
                touched.add(event.user_id)
                conn.execute(
                    "INSERT INTO user_recent (user_id, seq, item_id, event_type) VALUES (?, ?, ?, ?)",
                    (event.user_id, cursor.lastrowid, event.item_id, event.event_type),
                )
                if event.event_type in dislike_types:
                    conn.execute(
                        "INSERT OR IGNORE INTO user_dislikes (user_id, item_id) VALUES (?, ?)",
                        (event.user_id, event.item_id),
                    )
            for user_id in touched:  # keep the recent state bounded
                conn.execute(
                    "DELETE FROM user_recent WHERE user_id = ? AND seq <= ("
                    "  SELECT seq FROM user_recent WHERE user_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (user_id, user_id, self.options.recent_limit),
                )
        return AppendResult(stored=stored, duplicates=len(events) - stored, new=new)

    def item_last_seen(self, item_ids: Collection[str]) -> dict[str, float]:
        ids = list(dict.fromkeys(item_ids))
        result: dict[str, float] = {}
        with self._read() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start:start + _IDS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                result.update(conn.execute(
                    f"SELECT item_id, timestamp FROM item_last_seen WHERE item_id IN ({marks})", chunk).fetchall())
        return result

    def user_state(self, user_id: str, limit: int) -> UserState:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT item_id, event_type FROM user_recent WHERE user_id = ? ORDER BY seq DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
            disliked = {r[0] for r in conn.execute("SELECT item_id FROM user_dislikes WHERE user_id = ?", (user_id,))}
            erased = conn.execute("SELECT 1 FROM erased_users WHERE user_id = ?", (user_id,)).fetchone() is not None
        rows.reverse()
        return UserState(user_id=user_id, recent=[(r[0], r[1]) for r in rows], disliked=disliked, erased=erased)

    def erase_user(self, user_id: str) -> int:
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            conn.execute("DELETE FROM user_recent WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM user_dislikes WHERE user_id = ?", (user_id,))
            conn.execute(
                "INSERT OR REPLACE INTO erased_users (user_id, erased_at) VALUES (?, ?)", (user_id, time.time())
            )
        return deleted

    def event_count(self, user_id: str | None = None) -> int:
        with self._read() as conn:
            if user_id is None:
                return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,)).fetchone()[0]

    def iter_event_log(self, chunk_size: int = 10_000) -> Iterator[list[FeedbackEvent]]:
        """The log in arrival order (``seq``), a short read transaction per chunk, so serving
        keeps writing meanwhile; events stored during the walk come at its end."""
        after = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    "SELECT seq, user_id, item_id, event_type, timestamp, value, event_id FROM events "
                    "WHERE seq > ? ORDER BY seq LIMIT ?", (after, max(1, int(chunk_size))),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            yield [FeedbackEvent(user_id=r[1], item_id=r[2], event_type=r[3], timestamp=r[4], value=r[5],
                                 event_id=r[6]) for r in rows]

    def erased_users(self) -> set[str]:
        with self._read() as conn:
            return {row[0] for row in conn.execute("SELECT user_id FROM erased_users")}

    def events(self, user_id: str) -> list[FeedbackEvent]:
        """The user's logged events in arrival order (for inspection and tests)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT user_id, item_id, event_type, timestamp, value, event_id FROM events "
                "WHERE user_id = ? ORDER BY seq",
                (user_id,),
            ).fetchall()
        return [
            FeedbackEvent(user_id=r[0], item_id=r[1], event_type=r[2], timestamp=r[3], value=r[4], event_id=r[5])
            for r in rows
        ]

    # -- item catalogue --------------------------------------------------------------------
    def put_item(self, item_id: str, record: dict[str, Any]) -> int:
        with self._write() as conn:
            version = self._bump(conn, "catalog")
            conn.execute(
                "INSERT OR REPLACE INTO catalog (item_id, record, deleted, version) VALUES (?, ?, 0, ?)",
                (item_id, json.dumps(record), version),
            )
        return version

    def delete_item(self, item_id: str) -> int:
        with self._write() as conn:
            version = self._bump(conn, "catalog")
            conn.execute(
                "INSERT OR REPLACE INTO catalog (item_id, record, deleted, version) VALUES (?, '{}', 1, ?)",
                (item_id, version),
            )
        return version

    def catalog_version(self) -> int:
        with self._lock:
            row = self._connection().execute("SELECT value FROM counters WHERE name = 'catalog'").fetchone()
        return row[0] if row else 0

    def catalog_changes(self, since_version: int) -> list[CatalogChange]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT item_id, version, deleted, record FROM catalog WHERE version > ? ORDER BY version",
                (since_version,),
            ).fetchall()
        return [CatalogChange(item_id=r[0], version=r[1], deleted=bool(r[2]), record=json.loads(r[3])) for r in rows]

    # -- model generations -----------------------------------------------------------------
    def stage_model(self, model_dir: str) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO model_generations (model_dir, status, created_at) VALUES (?, 'staged', ?)",
                (model_dir, time.time()),
            )
            return int(cursor.lastrowid)

    def activate_model(self, generation: int) -> None:
        with self._write() as conn:
            found = conn.execute("SELECT 1 FROM model_generations WHERE generation = ?", (generation,)).fetchone()
            if found is None:
                raise KeyError(f"no model generation {generation}")
            conn.execute("UPDATE model_generations SET status = 'retired' WHERE status = 'active'")
            conn.execute("UPDATE model_generations SET status = 'active' WHERE generation = ?", (generation,))
            conn.execute(
                "INSERT INTO counters (name, value) VALUES ('active_model', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (generation,),
            )

    def fail_model(self, generation: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE model_generations SET status = 'failed' WHERE generation = ? AND status = 'staged'",
                (generation,),
            )

    def model_generation(self, generation: int | None = None) -> ModelGeneration | None:
        with self._lock:
            conn = self._connection()
            if generation is None:
                row = conn.execute(
                    "SELECT g.generation, g.model_dir, g.status FROM counters c "
                    "JOIN model_generations g ON g.generation = c.value WHERE c.name = 'active_model'"
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT generation, model_dir, status FROM model_generations WHERE generation = ?",
                    (generation,),
                ).fetchone()
        return ModelGeneration(generation=row[0], model_dir=row[1], status=row[2]) if row else None

    def set_model_status(self, generation: int, status: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE model_generations SET status = ? WHERE generation = ?", (status, generation))

    # -- experiments -----------------------------------------------------------------------
    def save_experiment(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO experiments (name, record) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET record = excluded.record",
                         (record["name"], json.dumps(record)))

    def experiments(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [json.loads(row[0]) for row in conn.execute("SELECT record FROM experiments ORDER BY seq")]

    def record_impression(self, impression: Impression) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO impressions (impression_id, experiment, arm, item_ids, created_at) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (impression.impression_id, impression.experiment, impression.arm,
                          json.dumps(impression.item_ids), time.time()))

    def impressions(self, impression_ids: Collection[str]) -> dict[str, Impression]:
        ids = list(dict.fromkeys(impression_ids))
        found: dict[str, Impression] = {}
        with self._read() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start:start + _IDS_PER_QUERY]
                rows = conn.execute("SELECT impression_id, experiment, arm, item_ids FROM impressions "
                                    f"WHERE impression_id IN ({','.join('?' * len(chunk))})", chunk)
                for row in rows:
                    found[row[0]] = Impression(row[0], row[1], row[2], json.loads(row[3]))
        return found

    def record_attributed_events(self, events: Sequence[AttributedEvent]) -> int:
        now, stored = time.time(), 0
        with self._write() as conn:
            for event in events:
                stored += conn.execute(
                    "INSERT OR IGNORE INTO attributed_events (event_id, impression_id, experiment, arm, item_id, "
                    "event_type, position, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.event_id, event.impression_id, event.experiment, event.arm, event.item_id,
                     event.event_type, event.position, now)).rowcount
        return stored

    def impression_counts(self, experiment: str) -> dict[str, int]:
        with self._read() as conn:
            return dict(conn.execute("SELECT arm, COUNT(*) FROM impressions WHERE experiment = ? GROUP BY arm",
                                     (experiment,)).fetchall())

    def attributed_events(self, experiment: str) -> list[AttributedEvent]:
        with self._read() as conn:
            rows = conn.execute("SELECT event_id, impression_id, experiment, arm, item_id, event_type, position "
                                "FROM attributed_events WHERE experiment = ?", (experiment,)).fetchall()
        return [AttributedEvent(*row) for row in rows]
