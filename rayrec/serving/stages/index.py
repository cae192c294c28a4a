"""Top-K retrieval over the item vectors: exact matrix product, or FAISS HNSW for big catalogues,
over float32 vectors or compressed ones (float16, int8, PQ codes: :mod:`.codes`).

Rows are append-only: a new or re-encoded item gets a new row and its old row dies, so the
ANN index (which cannot update in place) and the exact matrix share the same row numbers.
Dead rows and per-request exclusions are masked out of the results.

Rows beyond the trained ones hold items added after training (vectors from content alone);
with a :class:`NewItemCalibration` their scores are put on the trained items' scale per query.

With compressed vectors the trained rows are searched through their codes only; the few rows
that need exact vectors (``rows_vectors``: PQ's re-scoring, explanations) are read from the
float32 model file, so a replica's resident memory is the codes, not the catalogue's floats.
"""

from __future__ import annotations

import logging

import numpy as np

from rayrec.models.ann import (PQ_MIN_ITEMS, VECTOR_KINDS, build_codes, build_hnsw_codes, faiss_available,
                               hnsw_parameters, search_hnsw)
from rayrec.models.arrays import FileRows, appended, release_pages
from rayrec.models.new_items import NewItemCalibration
from rayrec.schema import Vocabulary
from rayrec.serving.stages.codes import CompressedRows
from rayrec.serving.stages.item_rows import ItemRows, RowOf

__all__ = ["ItemIndex", "faiss_available", "fetch_size"]

logger = logging.getLogger(__name__)

#: ``/similar-items`` through the graph: candidates asked for per item answered (see _similar_ann),
#: and the widest spread of the trained vectors' lengths (95th over 5th percentile) for which the
#: inner-product graph's candidates still hold the cosine top-K: beyond it the answer is exact.
#: tests/unit/test_serving_index.py measures both sides.
SIMILAR_CANDIDATES_PER_ITEM = 16
SIMILAR_MAX_NORM_SPREAD = 2.0


class ItemIndex:
    """Item vectors by row, with liveness, popularity and an optional HNSW index.

    ``exact_max_items``: up to this many rows search is exact (``scores = E @ q``); above it an
    HNSW index (inner product) is built when faiss is installed, else search stays exact and
    a log line says so; ``ann_index``: that index already built (read from the model
    directory), used instead of building one. ``hnsw_m``, ``ef_construction``, ``ef_search``:
    None takes :func:`~rayrec.models.ann.scaled_hnsw_parameters` for the catalogue's size. ``new_item_calibration``: applied to the scores
    of rows added later (the index's first rows are the trained items).

    ``item_ids``: the trained rows' ids, best the model's :class:`~rayrec.schema.Vocabulary`
    (``row_ids`` and ``row_of`` read it instead of copying it).

    ``vectors`` is kept as given (a memory-mapped model file stays shared between the replicas
    of a node); rows added later live in a growable block of their own, so an added item costs
    O(D), not a copy of the catalogue.

    ``vector_kind`` (``retrieval.vectors``): ``float32`` searches ``vectors`` itself; ``float16``,
    ``int8`` and ``pq`` search FAISS codes of them instead (needs faiss): a flat index scanned
    whole up to ``exact_max_items`` rows (``codes_index``: that index read from the model
    directory), an HNSW graph over the codes above (``ann_index``: that graph). PQ keeps
    ``pq_code_bytes`` bytes per item (None: D/4, 16x less than float32) and re-scores its best
    ``pq_rerank`` candidates with the float32 rows. Rows added later are not encoded into the
    codes: they are few, so they are scored exactly (and calibrated) on every search.
    """

    def __init__(
        self,
        item_ids: Vocabulary | list[str],
        vectors: np.ndarray,
        popularity: np.ndarray | None = None,
        exact_max_items: int = 250_000,
        hnsw_m: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
        new_item_calibration: NewItemCalibration | None = None,
        ann_index=None,
        vector_kind: str = "float32",
        pq_code_bytes: int | None = None,
        pq_rerank: int = 1000,
        codes_index=None,
    ) -> None:
        if vector_kind not in VECTOR_KINDS:
            raise ValueError(f"retrieval.vectors must be one of {', '.join(VECTOR_KINDS)}, got {vector_kind!r}")
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        vocabulary = Vocabulary.of(item_ids)  # the model's own: read, not copied (item_rows says why)
        self.row_ids = ItemRows(vocabulary)
        self.trained_rows = len(self.row_ids)
        self.calibration = new_item_calibration
        self.row_of = RowOf(vocabulary)
        self.trained_vectors = vectors
        self._added = np.zeros((0, vectors.shape[1]), dtype=np.float32)  # rows added later (see appended)
        self.alive = np.ones(len(self.row_ids), dtype=bool)
        pop = np.zeros(len(self.row_ids), dtype=np.float32) if popularity is None else np.asarray(popularity, np.float32)
        self.popularity = pop.copy()
        self.exact_max_items = exact_max_items
        self.hnsw = hnsw_parameters(self.trained_rows, hnsw_m, ef_construction, ef_search)
        self.ef_search = self.hnsw.ef_search
        self.pq_rerank = pq_rerank
        if vector_kind == "pq" and self.trained_rows < PQ_MIN_ITEMS:
            logger.warning("retrieval.vectors: pq needs at least %d items to train its codebooks, the model has %d; "
                           "serving float32 vectors", PQ_MIN_ITEMS, self.trained_rows)
            vector_kind = "float32"
        if vector_kind != "float32" and not faiss_available():
            raise RuntimeError(f"retrieval.vectors: {vector_kind} needs faiss (pip install faiss-cpu)")
        self.vector_kind = vector_kind
        self.codes: CompressedRows | None = None  # the trained rows' codes (None: float32 vectors)
        # Float32 norms are kept (cosine per /similar-items); compressed ones are computed when asked.
        self._trained_norms = _row_norms(vectors) if vector_kind == "float32" else None
        self._added_norms = np.zeros(0, dtype=np.float32)
        self.ann = None
        self.loaded = False  # whether the graph or codes searched were read from the model directory
        if len(self.row_ids) > exact_max_items:
            if ann_index is not None and ann_index.ntotal == len(self.row_ids):
                self.ann = ann_index
                self.loaded = True
            elif faiss_available():
                self.ann = build_hnsw_codes(vectors, vector_kind, self.hnsw.m, self.hnsw.ef_construction,
                                            pq_code_bytes)
                logger.info("built an HNSW index over %d %s items (%s)", len(self.row_ids), vector_kind,
                            self.hnsw.as_record())
            else:
                logger.warning(
                    "%d items exceed exact_search_max_items=%d but faiss is not installed "
                    "(pip install faiss-cpu); using exact search",
                    len(self.row_ids),
                    exact_max_items,
                )
        if vector_kind != "float32":
            if self.ann is not None:
                import faiss

                self.codes = CompressedRows(faiss.downcast_index(self.ann.storage))
            else:
                if codes_index is None or codes_index.ntotal != self.trained_rows:
                    codes_index = build_codes(vectors, vector_kind, pq_code_bytes)
                    logger.info("encoded %d items as %s codes", self.trained_rows, vector_kind)
                else:
                    self.loaded = True
                self.codes = CompressedRows(codes_index)
            # Building the codes (or the calibration before them) read the whole float32 file:
            # hand its pages back, so the replica keeps only the codes resident.
            release_pages(vectors)
        self._file_rows = FileRows.of(vectors) if self.codes is not None else None
        self.similar_through_graph = self.ann is not None and _length_spread(self.norms) <= SIMILAR_MAX_NORM_SPREAD
        if self.ann is not None and not self.similar_through_graph:
            logger.info("item vector lengths vary more than %.1fx: /similar-items scores every item (cosine) "
                        "instead of asking the inner-product graph", SIMILAR_MAX_NORM_SPREAD)
        # A graph built here over float32 vectors takes added rows. One read from the model
        # directory is memory-mapped (shared by the node's replicas) and cannot grow, and one over
        # codes never does (see class doc): added rows are scored exactly beside those.
        self._ann_has_added = self.vector_kind == "float32" and not self.loaded

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
            return self._trained_rows_vectors(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        trained = rows < self.trained_rows
        out[trained] = self._trained_rows_vectors(rows[trained])
        out[~trained] = self._added[rows[~trained] - self.trained_rows]
        return out

    def _trained_rows_vectors(self, rows: np.ndarray) -> np.ndarray:
        # With codes, the float32 file is read row by row (pread), so the rows PQ re-scores or an
        # explanation needs do not map the pages around them too (FileRows says why).
        return self._file_rows[rows] if self._file_rows is not None else self.trained_vectors[rows]

    def unit_rows(self, rows) -> np.ndarray:
        """Unit-length vectors of some rows (for cosine similarity): (M,) -> (M, D)."""
        vectors = self.rows_vectors(rows)
        return vectors / _row_norms(vectors)[:, None]

    @property
    def norms(self) -> np.ndarray:
        """Every row's vector length (rows,); for compressed vectors, of the decoded codes (a scan)."""
        trained = self._trained_norms if self.codes is None else np.maximum(self.codes.norms(), 1e-12)
        return np.concatenate([trained, self._added_norms]) if len(self._added_norms) else trained

    def cosine_to(self, row: int) -> np.ndarray:
        """Cosine similarity of every row to ``row``: (rows,)."""
        return self._products(self.unit_rows([row])[0]) / self.norms

    def describe(self) -> dict[str, object]:
        """What ``/healthz`` reports: the vectors' kind, their bytes per trained item, how they are
        searched, and whether that index came from the model directory (else built at start)."""
        described = {"kind": self.vector_kind, "bytes_per_item": round(self.vector_bytes / max(1, self.trained_rows), 2),
                     "search": "hnsw" if self.ann is not None else "exact scan", "from_model_dir": self.loaded}
        if self.ann is not None:
            described["hnsw"] = {"m": self.hnsw.m, "ef_search": self.ef_search,
                                 "similar_items": self.similar_through_graph}
        return described

    @property
    def vector_bytes(self) -> int:
        """Bytes the trained rows' searchable vectors take: the float32 matrix, or the codes
        (an HNSW graph's links not counted)."""
        return int(self.trained_vectors.nbytes if self.codes is None else self.codes.nbytes)

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
        self._added = appended(self._added, vectors)
        self._added_norms = appended(self._added_norms, _row_norms(vectors))
        self.alive = appended(self.alive, np.ones(count, dtype=bool))
        self.popularity = appended(self.popularity, np.full(count, popularity, np.float32))
        if self.ann is not None and self._ann_has_added:
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
        query = np.asarray(query, dtype=np.float32)
        trained = self.trained_vectors @ query if self.codes is None else self.codes.products(query[None, :])[0]
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
        ``exact``: skip the HNSW graph (a flat scan of compressed codes is complete anyway).
        """
        query = np.ascontiguousarray(query, dtype=np.float32)
        if scores is None and self.ann is not None and not exact:
            rows, found = self._search_ann(query, k, allowed)
            if rows is not None:
                return rows, found
        if scores is None and self.codes is not None:
            return self._search_codes(query, k, allowed)
        return self.top_rows(self.scores(query) if scores is None else scores, k, allowed)

    def scores_many(self, queries: np.ndarray) -> np.ndarray | None:
        """:meth:`scores` of B queries at once, (B, D) -> (B, rows), or None where search goes
        through the ANN index or compressed codes. Exact search is bound by reading the item
        matrix, so B queries read it once instead of B times."""
        if self.ann is not None or self.codes is not None:
            return None
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = queries @ self.trained_vectors.T
        if len(self._added):
            scores = np.concatenate([scores, queries @ self._added.T], axis=1)
            if self.calibration is not None:
                for row, query in enumerate(queries):
                    scores[row, self.trained_rows:] = self.calibration.apply(query, scores[row, self.trained_rows:])
        return scores

    def _fetch(self, k: int, allowed: np.ndarray) -> int | None:
        """:func:`fetch_size` for this catalogue; PQ's at least the rows it re-scores."""
        fetch = fetch_size(k, int(np.count_nonzero(allowed)), len(self.row_ids))
        if fetch is None:
            return None
        return max(fetch, self.pq_rerank) if self.vector_kind == "pq" else fetch

    def _search_ann(self, query: np.ndarray, k: int, allowed: np.ndarray):
        fetch = self._fetch(k, allowed)
        if fetch is None:  # a very restrictive filter: exact search is cheaper and complete
            return None, None
        scores, rows = search_hnsw(self.ann, query, fetch, self.ef_search)
        return self._found(rows, scores, query, k, allowed, self._ann_has_added)

    def similar(self, row: int, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """Rows and cosine similarities of the ``k`` allowed rows nearest to ``row``, best first,
        and which path found them: ``"hnsw"`` (the graph's candidates re-scored by cosine) or
        ``"exact"`` (every row: no graph, lengths too uneven for it, or too few of its candidates
        allowed)."""
        if self.similar_through_graph:
            found = self._similar_ann(row, k, allowed)
            if found is not None:
                return (*found, "hnsw")
        rows, scores = self.top_rows(self.cosine_to(row), k, allowed)
        return rows, scores, "exact"

    def _similar_ann(self, row: int, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        # The graph ranks by inner product, the answer by cosine: an item with a shorter vector
        # but the right direction sits lower in the graph's order, so ask for many more.
        fetch = self._fetch(SIMILAR_CANDIDATES_PER_ITEM * k, allowed)
        if fetch is None:
            return None
        query = self.unit_rows([row])[0]
        _, found = search_hnsw(self.ann, query, fetch, self.ef_search)
        rows = found[found >= 0]
        if len(self.row_ids) > self.trained_rows:
            # Added items are few and often short (content alone): all of them are scored.
            rows = np.union1d(rows, np.arange(self.trained_rows, len(self.row_ids)))
        rows = rows[allowed[rows]]
        if len(rows) < min(k, int(np.count_nonzero(allowed))):
            return None
        cosine = self.unit_rows(rows) @ query
        order = np.argsort(-cosine, kind="stable")[:k]
        return rows[order], cosine[order]

    def _search_codes(self, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-K over the compressed trained rows, with the added rows scored exactly. Through
        FAISS's own scan: benchmarks/compression.py times both ways here, and FAISS beat numpy
        dequantising blocks and multiplying for int8 (about 1.5x at 1M x 128) and by far for
        float16 (about 8x; numpy converts half floats slowly). A flat scan's top
        ``fetch`` rows hold the allowed top ``k`` whenever ``k`` of them survive the filter, so
        this is as complete as :meth:`top_rows`; else the whole catalogue is scored blockwise."""
        fetch = self._fetch(k, allowed)
        if fetch is not None:
            rows, scores = self.codes.search(query, fetch)
            rows, found = self._found(rows, scores, query, k, allowed, False)
            if rows is not None:
                return rows, found
        pool = max(k, self.pq_rerank) if self.vector_kind == "pq" else k
        rows, scores = self.top_rows(self.scores(query), pool, allowed)
        return self._reranked(rows, scores, query, k)

    def _found(self, rows: np.ndarray, scores: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray,
               index_has_added: bool):
        """The best ``k`` allowed of a top-K index's answer (rows, scores), or (None, None) when
        too few survived the filters (the caller falls back to a complete scan)."""
        keep = rows >= 0
        rows, scores = rows[keep], scores[keep]
        keep = allowed[rows]
        rows, scores = rows[keep], scores[keep]
        has_added = len(self.row_ids) > self.trained_rows
        if has_added and (self.calibration is not None or not index_has_added):
            # The index holds raw scores of trained rows (or no added rows at all): added items
            # are scored exactly, calibrated, and merged with the trained items it found (added
            # items are the few since training).
            trained = rows < self.trained_rows
            rows, scores = self._reranked(rows[trained], scores[trained], query, k)
            if len(rows) < min(k, int(np.count_nonzero(allowed[: self.trained_rows]))):
                return None, None
            new_rows = self.trained_rows + np.flatnonzero(allowed[self.trained_rows:])
            rows = np.concatenate([rows, new_rows])
            scores = np.concatenate([scores, self.row_scores(new_rows, query)])
            order = np.argsort(-scores, kind="stable")[:k]
            return rows[order], scores[order]
        rows, scores = self._reranked(rows, scores, query, k)
        if len(rows) < min(k, int(np.count_nonzero(allowed))):
            return None, None  # not enough survived the filters: fall back to exact
        return rows, scores

    def _reranked(self, rows: np.ndarray, scores: np.ndarray, query: np.ndarray, k: int):
        """The best ``k`` of candidates best first; PQ's are re-scored with their float32 rows
        first (a few hundred rows of the memory-mapped file, not the whole of it)."""
        if self.vector_kind == "pq" and self.pq_rerank and len(rows):
            rows = rows[: max(k, self.pq_rerank)]
            scores = self.row_scores(rows, query)
            order = np.argsort(-scores, kind="stable")
            rows, scores = rows[order], scores[order]
        return rows[:k], scores[:k]

    def recall_at_k(self, samples: int = 8, k: int = 10, seed: int | None = None,
                    queries: np.ndarray | None = None) -> float:
        """Sampled recall@k of :meth:`search` against exact search, with live items as queries
        (or the given ``queries``, (Q, D), e.g. users' vectors).

        1.0 without an ANN index (search is exact). Costs one ANN query and one exact pass per
        query; used by the serving metrics' recall probe and benchmarks/serving.py. With
        compressed vectors "exact" is a complete scan of the same codes: comparing with the
        float32 file would read all of it, which compression is there to avoid (the cost of
        the compression itself is measured offline by benchmarks/compression.py).
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


def fetch_size(k: int, allowed: int, indexed: int) -> int | None:
    """How many rows to ask a top-K index of ``indexed`` rows for so that ``k`` of the
    ``allowed`` ones survive; None when the filter is so restrictive that a complete scan is
    cheaper (and complete)."""
    blocked = indexed - allowed
    fetch = min(indexed, max(2 * (k + blocked), k + 64))
    return None if fetch > max(4096, 4 * k) else fetch


def _length_spread(norms: np.ndarray) -> float:
    """How unevenly long vectors are: the 95th percentile of ``norms`` over the 5th."""
    if not len(norms):
        return 1.0
    low, high = np.percentile(norms, [5, 95])
    return float(high / max(low, 1e-12))


def _row_norms(vectors: np.ndarray) -> np.ndarray:
    """(M, D) -> (M,) float32 lengths, at least 1e-12 (they divide)."""
    return np.maximum(np.linalg.norm(vectors, axis=1), 1e-12).astype(np.float32)
