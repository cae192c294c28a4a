"""Top-K retrieval over the item vectors: exact matrix product, or FAISS HNSW for big catalogues.

Rows are append-only: a new or re-encoded item gets a new row and its old row dies, so the
ANN index (which cannot update in place) and the exact matrix share the same row numbers.
Dead rows and per-request exclusions are masked out of the results.

Rows beyond the trained ones hold items added after training (vectors from content alone);
with a :class:`NewItemCalibration` their scores are put on the trained items' scale per query.
"""

from __future__ import annotations

import logging

import numpy as np

from rayrec.models.ann import build_hnsw, faiss_available
from rayrec.models.new_items import NewItemCalibration

__all__ = ["ItemIndex", "faiss_available"]

logger = logging.getLogger(__name__)


class ItemIndex:
    """Item vectors by row, with liveness, popularity and an optional HNSW index.

    ``exact_max_items``: up to this many rows search is exact (``scores = E @ q``); above it an
    HNSW index (inner product) is built when faiss is installed, else search stays exact and
    a log line says so; ``ann_index``: that index already built (read from the model
    directory), used instead of building one. ``new_item_calibration``: applied to the scores
    of rows added later (the index's first rows are the trained items).

    ``vectors`` is kept as given (a memory-mapped model file stays shared between the replicas
    of a node); rows added later live in a growable block of their own, so an added item costs
    O(D), not a copy of the catalogue.
    """

    def __init__(
        self,
        item_ids: list[str],
        vectors: np.ndarray,
        popularity: np.ndarray | None = None,
        exact_max_items: int = 250_000,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        new_item_calibration: NewItemCalibration | None = None,
        ann_index=None,
    ) -> None:
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.row_ids: list[str] = list(item_ids)
        self.trained_rows = len(self.row_ids)
        self.calibration = new_item_calibration
        self.row_of: dict[str, int] = {item_id: row for row, item_id in enumerate(self.row_ids)}
        self.trained_vectors = vectors
        self._added = np.zeros((0, vectors.shape[1]), dtype=np.float32)  # rows added later (see _appended)
        self.norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12).astype(np.float32)
        self.alive = np.ones(len(self.row_ids), dtype=bool)
        pop = np.zeros(len(self.row_ids), dtype=np.float32) if popularity is None else np.asarray(popularity, np.float32)
        self.popularity = pop.copy()
        self.exact_max_items = exact_max_items
        self.ef_search = ef_search
        self.ann = None
        if len(self.row_ids) > exact_max_items:
            if ann_index is not None and ann_index.ntotal == len(self.row_ids):
                self.ann = ann_index
                self.ann.hnsw.efSearch = ef_search
            elif faiss_available():
                self.ann = build_hnsw(vectors, hnsw_m, ef_construction)
                self.ann.hnsw.efSearch = ef_search
                logger.info("built an HNSW index over %d items (M=%d)", len(self.row_ids), hnsw_m)
            else:
                logger.warning(
                    "%d items exceed exact_search_max_items=%d but faiss is not installed "
                    "(pip install faiss-cpu); using exact search",
                    len(self.row_ids),
                    exact_max_items,
                )

    @property
    def dim(self) -> int:
        return self.trained_vectors.shape[1]

    @property
    def vectors(self) -> np.ndarray:
        """Every row's vector (N + added, D). A copy when items were added: for whole-catalogue
        products use :meth:`scores`, which never concatenates."""
        if not len(self._added):
            return self.trained_vectors
        return np.concatenate([self.trained_vectors, self._added])

    def rows_vectors(self, rows) -> np.ndarray:
        """Vectors of some rows: (M,) -> (M, D)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self._added):
            return self.trained_vectors[rows]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        trained = rows < self.trained_rows
        out[trained] = self.trained_vectors[rows[trained]]
        out[~trained] = self._added[rows[~trained] - self.trained_rows]
        return out

    def unit_rows(self, rows) -> np.ndarray:
        """Unit-length vectors of some rows (for cosine similarity): (M,) -> (M, D)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.rows_vectors(rows) / self.norms[rows, None]

    def cosine_to(self, row: int) -> np.ndarray:
        """Cosine similarity of every row to ``row``: (rows,)."""
        return self._products(self.unit_rows([row])[0]) / self.norms

    def __len__(self) -> int:
        return int(self.alive.sum())

    def __contains__(self, item_id: str) -> bool:
        row = self.row_of.get(item_id)
        return row is not None and bool(self.alive[row])

    # -- catalogue changes ------------------------------------------------------------------
    def relative_popularity(self) -> np.ndarray:
        """Each item's popularity over the most popular item's, in [0, 1]: the scale of the
        popular-items fallback's scores (a raw count would look like a model score)."""
        top = float(self.popularity.max()) if len(self.popularity) else 0.0
        return self.popularity / top if top > 0 else np.zeros_like(self.popularity)

    def upsert(self, item_ids: list[str], vectors: np.ndarray, popularity: float = 0.0) -> None:
        """Add items (or replace their vectors); each gets a fresh row."""
        if not item_ids:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(item_ids), self.dim)
        start = len(self.row_ids)
        for offset, item_id in enumerate(item_ids):
            old = self.row_of.get(item_id)
            if old is not None:
                self.alive[old] = False
            self.row_ids.append(item_id)
            self.row_of[item_id] = start + offset
        count = len(item_ids)
        self._added = _appended(self._added, vectors)
        norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12).astype(np.float32)
        self.norms = _appended(self.norms, norms)
        self.alive = _appended(self.alive, np.ones(count, dtype=bool))
        self.popularity = _appended(self.popularity, np.full(count, popularity, np.float32))
        if self.ann is not None:
            self.ann.add(vectors)

    def revive(self, item_id: str) -> bool:
        """Make a deleted item live again with its last vector; False if it never existed."""
        row = self.row_of.get(item_id)
        if row is None:
            return False
        self.alive[row] = True
        return True

    def delete(self, item_id: str) -> bool:
        row = self.row_of.get(item_id)
        if row is None or not self.alive[row]:
            return False
        self.alive[row] = False
        return True

    # -- scores -----------------------------------------------------------------------------
    def _products(self, query: np.ndarray) -> np.ndarray:
        """Raw inner products of every row with ``query``: (rows,)."""
        trained = self.trained_vectors @ query
        if not len(self._added):
            return trained
        return np.concatenate([trained, self._added @ query])

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Scores of every row for ``query`` (D,) -> (rows,), new items' calibrated."""
        scores = self._products(query)
        if self.calibration is not None and len(scores) > self.trained_rows:
            scores[self.trained_rows:] = self.calibration.apply(query, scores[self.trained_rows:])
        return scores

    def row_scores(self, rows, query: np.ndarray) -> np.ndarray:
        """Scores of some rows: (M,) rows, (D,) query -> (M,), new items' calibrated."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = self.rows_vectors(rows) @ np.asarray(query, dtype=np.float32)
        new = rows >= self.trained_rows
        if self.calibration is not None and new.any():
            scores[new] = self.calibration.apply(query, scores[new])
        return scores

    # -- search -----------------------------------------------------------------------------
    def allowed_mask(self, excluded_ids) -> np.ndarray:
        """Live rows minus ``excluded_ids``; a fresh array the caller may narrow further."""
        mask = self.alive.copy()
        row_of = self.row_of
        for item_id in excluded_ids:
            row = row_of.get(item_id)
            if row is not None:
                mask[row] = False
        return mask

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray, exact: bool = False,
               scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner-product scores of the best ``k`` allowed rows, best first.

        query: (D,), allowed: (rows,) bool -> ((<=k,), (<=k,)). ``scores``: this query's
        :meth:`scores`, when the caller computed them for a batch (:meth:`scores_many`).
        """
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self.ann is not None and not exact:
            rows, found = self._search_ann(query, k, allowed)
            if rows is not None:
                return rows, found
        return self.top_rows(self.scores(query) if scores is None else scores, k, allowed)

    def scores_many(self, queries: np.ndarray) -> np.ndarray | None:
        """:meth:`scores` of B queries at once, (B, D) -> (B, rows), or None where search goes
        through the ANN index. Exact search is bound by reading the item matrix, so B queries
        read it once instead of B times."""
        if self.ann is not None:
            return None
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = queries @ self.trained_vectors.T
        if len(self._added):
            scores = np.concatenate([scores, queries @ self._added.T], axis=1)
            if self.calibration is not None:
                for row, query in enumerate(queries):
                    scores[row, self.trained_rows:] = self.calibration.apply(query, scores[row, self.trained_rows:])
        return scores

    def _search_ann(self, query: np.ndarray, k: int, allowed: np.ndarray):
        blocked = len(allowed) - int(np.count_nonzero(allowed))
        fetch = min(len(self.row_ids), max(2 * (k + blocked), k + 64))
        if fetch > max(4096, 4 * k):  # a very restrictive filter: exact search is cheaper and complete
            return None, None
        self.ann.hnsw.efSearch = max(self.ef_search, fetch)
        scores, rows = self.ann.search(query[None, :], fetch)
        rows, scores = rows[0], scores[0]
        keep = (rows >= 0)
        rows, scores = rows[keep], scores[keep]
        keep = allowed[rows]
        rows, scores = rows[keep], scores[keep]
        if self.calibration is not None and len(self.row_ids) > self.trained_rows:
            # The graph holds raw scores: new items are scored exactly, calibrated, and merged
            # with the trained items it found (new items are the few added since training).
            trained = rows < self.trained_rows
            rows, scores = rows[trained][:k], scores[trained][:k]
            if len(rows) < min(k, int(np.count_nonzero(allowed[: self.trained_rows]))):
                return None, None
            new_rows = self.trained_rows + np.flatnonzero(allowed[self.trained_rows:])
            rows = np.concatenate([rows, new_rows])
            scores = np.concatenate([scores, self.row_scores(new_rows, query)])
            order = np.argsort(-scores, kind="stable")[:k]
            return rows[order], scores[order]
        rows, scores = rows[:k], scores[:k]
        if len(rows) < min(k, int(np.count_nonzero(allowed))):
            return None, None  # not enough survived the filters: fall back to exact
        return rows, scores

    def recall_at_k(self, samples: int = 8, k: int = 10, seed: int | None = None,
                    queries: np.ndarray | None = None) -> float:
        """Sampled recall@k of :meth:`search` against exact search, with live items as queries
        (or the given ``queries``, (Q, D), e.g. users' vectors).

        1.0 without an ANN index (search is exact). Costs one ANN query and one exact pass per
        query; used by the serving metrics' recall probe and benchmarks/serving.py.
        """
        if self.ann is None:
            return 1.0
        if queries is None:
            live = np.flatnonzero(self.alive)
            if len(live) == 0:
                return 1.0
            rng = np.random.default_rng(seed)
            queries = self.unit_rows(rng.choice(live, size=min(samples, len(live)), replace=False))
        found = []
        for query in queries:
            exact_rows, _ = self.top_rows(self.scores(query), k, self.alive)
            ann_rows, _ = self.search(query, k, self.alive)
            if len(exact_rows):
                found.append(len(set(exact_rows.tolist()) & set(ann_rows.tolist())) / len(exact_rows))
        return float(np.mean(found)) if found else 1.0

    @staticmethod
    def top_rows(scores: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` allowed rows of ``scores`` (modified in place), best first."""
        scores[~allowed] = -np.inf
        available = int(np.count_nonzero(allowed))
        k = min(k, available)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        rows = np.argpartition(scores, len(scores) - k)[-k:] if k < len(scores) else np.arange(len(scores))
        order = np.argsort(-scores[rows], kind="stable")
        rows = rows[order]
        return rows, scores[rows]


def _appended(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``array`` with ``values`` (rows) after it, as a view of a buffer with room to spare:
    appends cost their own size, amortised, not a copy of every row (the buffer doubles when
    full). Used for the added item vectors and the per-row bookkeeping alike."""
    used, extra = len(array), len(values)
    buffer = array.base if isinstance(array.base, np.ndarray) and array.base.ndim == array.ndim else array
    is_prefix = buffer.ctypes.data == array.ctypes.data and buffer.dtype == array.dtype
    if not is_prefix or len(buffer) < used + extra:
        grown = np.empty((max(2 * used, used + extra, 16), *array.shape[1:]), dtype=array.dtype)
        grown[:used] = array
        buffer = grown
    buffer[used: used + extra] = values
    return buffer[: used + extra]
