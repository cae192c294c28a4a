"""An on-disk cache of text vectors, keyed by model fingerprint and content hash.

One SQLite file per cache directory, shared by processes (training driver, serving replicas):
WAL mode lets readers and one writer work at once, and ``INSERT OR IGNORE`` makes two
processes encoding the same text harmless. Vectors are stored as raw float32, unnormalised,
so the ``normalize`` option never splits the cache.

A cache that cannot be opened (read-only home, full disk) is reported once and skipped: the
vectors are then simply computed again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CACHE_FILE = "embeddings.sqlite"
#: Keys looked up per SQL statement (SQLite allows at most 32,766 parameters).
_LOOKUP_CHUNK = 500


def content_hash(text: str) -> str:
    """The cache key of one text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors of texts under one model: ``get_many`` what is known, ``put_many`` the rest."""

    def __init__(self, directory: str | Path, model_key: str) -> None:
        self.path = Path(directory).expanduser() / CACHE_FILE
        self.model_key = model_key
        self._connection: sqlite3.Connection | None = None
        self._broken = False

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is not None or self._broken:
            return self._connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS vectors ("
                " model TEXT NOT NULL, content TEXT NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (model, content)) WITHOUT ROWID"
            )
            connection.commit()
        except (OSError, sqlite3.Error) as exc:
            warnings.warn(f"rayrec-text: vector cache {self.path} unusable ({exc}); encoding without a cache",
                          RuntimeWarning, stacklevel=3)
            self._broken = True
            return None
        self._connection = connection
        return connection

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (content hashes), as ``{key: (dim,) float32}``."""
        connection = self._connect()
        if connection is None or not keys:
            return {}
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start: start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT content, vector FROM vectors WHERE model = ? AND content IN ({marks})",
                    [self.model_key, *chunk],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        except sqlite3.Error as exc:
            warnings.warn(f"rayrec-text: reading the vector cache {self.path} failed ({exc})", RuntimeWarning,
                          stacklevel=2)
            return {}
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store ``(content hash, (dim,) vector)`` pairs; existing keys are left as they are."""
        connection = self._connect()
        if connection is None:
            return
        rows = [(self.model_key, key, np.ascontiguousarray(vector, dtype=np.float32).tobytes()) for key, vector in items]
        try:
            with connection:
                connection.executemany("INSERT OR IGNORE INTO vectors (model, content, vector) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            warnings.warn(f"rayrec-text: writing the vector cache {self.path} failed ({exc})", RuntimeWarning,
                          stacklevel=2)

    def count(self) -> int:
        """Vectors stored for this model."""
        connection = self._connect()
        if connection is None:
            return 0
        return int(connection.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", [self.model_key]).fetchone()[0])

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
