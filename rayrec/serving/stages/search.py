"""Natural-language search (``POST /search``): items whose text matches a query.

A query-capable feature extractor (``supports_queries``, e.g. ``text_embedding`` from
rayrec-text) puts the query and every item's text in one space; the best ``pool`` text
matches (cosine) are kept. When the request names a user with history, those matches are
re-ranked by a blend of text match and the user's taste (the model's score for the item),
each standardised within the pool so that neither scale dominates by accident:

    score = (1 - personalization) * z(text match) + personalization * z(user score)

Which extractor: the one named in ``AppArgs.search``, else the model's own item feature
when it was trained with a query-capable one (its stored item vectors are reused, nothing
is re-encoded). Without either, search is off and ``/search`` answers 404 saying how to
turn it on. Item vectors are kept row-aligned with the scorer's :class:`ItemIndex`, so the
index's live/deleted mask and filters apply unchanged.

Above ``retrieval.exact_search_max_items`` items the text matches come from an HNSW graph over
the searchable rows' text vectors (exported by ``rayrec train`` beside the item index and
loaded, else built at start; parameters as for the item index), re-scored exactly;
items added or re-described later are scored exactly beside it until the next start.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from rayrec.components import FeatureExtractor
from rayrec.models.ann import build_hnsw, faiss_available, hnsw_parameters, read_text_index, search_hnsw
from rayrec.models.arrays import appended
from rayrec.schema import is_searchable
from rayrec.serving.config import SearchOptions
from rayrec.serving.stages.index import ItemIndex, fetch_size

logger = logging.getLogger(__name__)

SEARCH_OFF_MESSAGE = (
    "search is not enabled on this server: serve a model trained with a query-capable item feature "
    "(e.g. item_features: [{name: text_embedding}] from rayrec-text), or set search.extractor in the app arguments"
)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _standardise(values: np.ndarray) -> np.ndarray:
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 1e-9 else np.zeros_like(values)


class TextSearch:
    """Query and item text vectors, row-aligned with an :class:`ItemIndex`.

    Rows whose item has no text at all are not searchable (an empty string would match every
    query equally badly and fill results with noise).

    ``exact_max_items``, ``ann_options`` (``m``, ``ef_construction``, ``ef_search``; missing:
    scaled with the catalogue): above that many rows an HNSW graph (faiss) finds the matches.
    ``model_dir``, ``model_config``: where export saved that graph over these ``vectors``
    (``text_index`` in config.json); it is loaded when it matches, else built here.
    """

    def __init__(self, extractor: FeatureExtractor, vectors: np.ndarray, searchable: np.ndarray,
                 options: SearchOptions, exact_max_items: int = 250_000,
                 ann_options: dict[str, int] | None = None, model_dir: Any = None,
                 model_config: dict[str, Any] | None = None) -> None:
        self.extractor = extractor
        self.vectors = _unit_rows(vectors)
        self.searchable = np.asarray(searchable, dtype=bool)
        self.options = options
        self.ann = None
        self._graph_rows = np.zeros(0, dtype=np.int64)  # graph id -> row (only searchable rows are in it)
        # Rows the graph does not answer for: changed text after it was built (it holds the old
        # vector) or text only gained later. Scored exactly on every query; few between restarts.
        self._unindexed: set[int] = set()
        self._covered = len(self.vectors)  # rows the graph was built or extended over
        self._graph_grows = True  # False for the exported graph: memory-mapped, it cannot take rows
        if len(self.vectors) > exact_max_items:
            if faiss_available():
                parameters = hnsw_parameters(len(self.vectors), **(ann_options or {}))
                self.ef_search = parameters.ef_search
                saved = read_text_index(model_dir, model_config, len(self.vectors), parameters.m,
                                        (ann_options or {}).get("ef_construction")) if model_dir else None
                if saved is not None:
                    self.ann, self._graph_rows = saved
                    self._graph_grows = False
                    # As for the item index: a configured ef_search wins, else the export's.
                    self.ef_search = (ann_options or {}).get("ef_search") or model_config["text_index"].get(
                        "ef_search", parameters.ef_search)
                    # Items whose text appeared after export are not in the graph: scored exactly.
                    in_graph = np.zeros(len(self.vectors), dtype=bool)
                    in_graph[self._graph_rows] = True
                    self._unindexed.update(np.flatnonzero(self.searchable & ~in_graph).tolist())
                    logger.info("loaded the exported HNSW index over the text of %d items", len(self._graph_rows))
                else:
                    self._graph_rows = np.flatnonzero(self.searchable).astype(np.int64)
                    self.ann = build_hnsw(self.vectors[self._graph_rows], parameters.m, parameters.ef_construction)
                    logger.info("built an HNSW index over the text of %d items (%s)", len(self._graph_rows),
                                parameters.as_record())
            else:
                logger.warning("%d items exceed exact_search_max_items=%d but faiss is not installed "
                               "(pip install faiss-cpu); text search stays exact", len(self.vectors), exact_max_items)

    @classmethod
    def for_model(cls, model: Any, item_ids: Sequence[str], records: dict[str, dict[str, Any]],
                  options: SearchOptions, exact_max_items: int = 250_000,
                  ann_options: dict[str, int] | None = None) -> "TextSearch | None":
        """Search over ``item_ids`` (the index rows, in order), or None when search is off."""
        from rayrec import plugins

        extractor, stored = None, None
        if options.extractor:
            extractor = plugins.create_component("feature_extractor", options.extractor, options.options)
            if not extractor.supports_queries:
                raise ValueError(f"search.extractor: feature extractor {options.extractor!r} cannot encode queries")
        else:
            specs = (getattr(model, "config", None) or {}).get("train_config", {}).get("item_features", [])
            for position, spec in enumerate(specs):
                try:
                    candidate = plugins.create_component("feature_extractor", spec["name"], spec.get("options"))
                except Exception as exc:  # the plugin is not installed here: no search, but serve
                    logger.warning("search is off: cannot create feature extractor %r (%s)", spec.get("name"), exc)
                    continue
                if candidate.supports_queries:
                    extractor = candidate
                    if len(specs) == 1:  # the tower's content buffer is exactly this extractor's output
                        stored = _stored_content(model)
                    break
        if extractor is None:
            return None
        item_records = [records.get(item_id, {"item_id": item_id}) for item_id in item_ids]
        if stored is not None and len(stored) == len(item_ids):
            vectors = stored
        else:
            vectors = np.asarray(extractor.extract(item_records), dtype=np.float32)
        searchable = np.array([is_searchable(r) for r in item_records], dtype=bool)
        # The graph export saved is over the stored vectors only (a blend keeps it with its content part).
        owner = getattr(model, "content_part", model) if vectors is stored else None
        search = cls(extractor, vectors, searchable, options, exact_max_items, ann_options,
                     model_dir=getattr(owner, "model_dir", None), model_config=getattr(owner, "config", None))
        search.encode_query("warm-up")  # load the text model now, not on the first user's query
        return search

    # -- catalogue changes ------------------------------------------------------------------
    def update(self, index: ItemIndex, changed: dict[str, dict[str, Any]]) -> None:
        """Follow the index after catalogue changes: new rows, and new text for ``changed`` items."""
        missing = len(index.row_ids) - len(self.vectors)
        if missing > 0:  # O(new rows): the arrays grow into spare room (see appended)
            self.vectors = appended(self.vectors, np.zeros((missing, self.vectors.shape[1]), np.float32))
            self.searchable = appended(self.searchable, np.zeros(missing, dtype=bool))
        if changed:
            rows = [index.row_of[item_id] for item_id in changed]
            records = list(changed.values())
            self.vectors[rows] = _unit_rows(self.extractor.extract(records))
            self.searchable[rows] = [is_searchable(r) for r in records]
            self._unindexed.update(row for row in rows if row < self._covered)
        if self.ann is not None and len(self.vectors) > self._covered:
            # New rows join a graph built here, an insertion each, not a rebuild.
            fresh = self._covered + np.flatnonzero(self.searchable[self._covered:])
            if not self._graph_grows:  # the mapped graph: new rows are scored exactly beside it, as changed ones are
                self._unindexed.update(fresh.tolist())
            elif len(fresh):
                self.ann.add(self.vectors[fresh])
                self._graph_rows = appended(self._graph_rows, fresh)
        self._covered = len(self.vectors)

    # -- queries ----------------------------------------------------------------------------
    def encode_query(self, query: str) -> np.ndarray:
        vector = np.asarray(self.extractor.encode_query(query), dtype=np.float32).reshape(-1)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def search(self, query_vector: np.ndarray, k: int, allowed: np.ndarray, index: ItemIndex,
               user_vector: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """Rows and scores of the best ``k`` allowed items for the query, best first, and how the
        text matches were found: ``"hnsw"`` or ``"exact"``."""
        allowed = allowed & self.searchable
        weight = self.options.personalization
        if user_vector is None or weight == 0:
            return self._matches(query_vector, k, allowed)
        rows, matches, retrieval = self._matches(query_vector, max(k, self.options.pool), allowed)
        taste = index.row_scores(rows, user_vector)
        blended = (1 - weight) * _standardise(matches) + weight * _standardise(taste)
        order = np.argsort(-blended, kind="stable")[:k]
        return rows[order], blended[order], retrieval

    def _matches(self, query_vector: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """The ``k`` allowed rows of best text match (cosine), best first, and the path taken."""
        if self.ann is not None:
            found = self._graph_matches(query_vector, k, allowed)
            if found is not None:
                return (*found, "hnsw")
        return (*ItemIndex.top_rows(self.vectors @ query_vector, k, allowed), "exact")

    def _graph_matches(self, query_vector: np.ndarray, k: int, allowed: np.ndarray):
        """The graph's candidates and the unindexed rows, allowed ones re-scored exactly; None
        when too few were allowed to be sure of the top ``k`` (the caller scans every row)."""
        available = int(np.count_nonzero(allowed))
        fetch = fetch_size(k, available, len(self._graph_rows))
        if not fetch:  # a scan is cheaper, or the graph is empty
            return None
        _, found = search_hnsw(self.ann, query_vector, fetch, self.ef_search)
        rows = self._graph_rows[found[found >= 0]]
        if self._unindexed:
            rows = np.unique(np.concatenate([rows, np.fromiter(self._unindexed, np.int64)]))
        rows = rows[allowed[rows]]
        if len(rows) < min(k, available):
            return None
        scores = self.vectors[rows] @ query_vector
        order = np.argsort(-scores, kind="stable")[:k]
        return rows[order], scores[order]


def _stored_content(model: Any) -> np.ndarray | None:
    """The content vectors the model was trained with, one row per item (padding row dropped)."""
    content = getattr(getattr(getattr(model, "network", None), "item_tower", None), "content", None)
    if content is None:
        return None
    return content[1:].detach().cpu().numpy().astype(np.float32)
