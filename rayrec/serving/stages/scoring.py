"""The scoring stage: top-K retrieval, re-rankers, filters, explanations, the item catalogue."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from collections.abc import Mapping, Set
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ValidationError

from rayrec.components import Candidate, CandidateSource, Scorer, ScoringContext
from rayrec.models.ann import DEFAULT_M, read_compressed, read_index
from rayrec.models.bundle import RecommenderModel
from rayrec.config import validation_problems
from rayrec.serving.config import ComponentSpec, NewItemOptions, SearchOptions
from rayrec.serving.experiments.live import RunningExperiment, arm_scorers
from rayrec.serving.schemas import ItemIn, PreparedRequest, SearchRequest
from rayrec.serving.stages.errors import NotFoundError, RequestError
from rayrec.serving.stages.index import ItemIndex
from rayrec.serving.stages.item_rows import CatalogRecords, TrainedItems, item_vocabulary
from rayrec.serving.stages.search import SEARCH_OFF_MESSAGE, TextSearch
from rayrec.state.base import BaseStateStore

logger = logging.getLogger(__name__)

#: A ``filter_candidates`` implementation: returns the kept candidates, or None to keep all.
CandidateFilter = Callable[..., "list[Candidate] | None"]

#: Scorers built with a request's ``scorer_options`` that a scoring replica keeps for reuse.
MAX_REQUEST_SCORERS = 64

EXPLANATION_ITEMS = 3
#: History items contributing less than this share of the top contributor are left out.
EXPLANATION_MIN_SHARE = 0.2


@dataclass
class CatalogView:
    """The live catalogue as candidate sources see it (read-only by convention).

    ``item_ids[i]`` has popularity ``popularity[i]`` (training interactions; 0 for new items);
    ``records`` holds item metadata by id; ``trained_items`` are the ids the model was trained on;
    ``added_items`` are those added later through ``PUT /items``, oldest first (deleted ones
    included: the scorer drops whatever is not allowed). ``item_ids`` and ``trained_items`` are
    read-only views of the model's vocabulary (a sequence and a set), not copies of it.
    """

    item_ids: Sequence[str]
    popularity: np.ndarray
    records: Mapping[str, dict[str, Any]]
    trained_items: Set[str]
    added_items: Sequence[str] = ()


def rerank_pool_size(k: int, configured: int | None = None) -> int:
    """How many candidates the re-rankers see for a request of ``k`` items.

    ``configured`` (``AppArgs.retrieval.rerank_pool``) when set, else ``min(max(2k, k + 20), 2000)``;
    never fewer than ``k``, so re-ranking alone never shortens the answer.
    """
    pool = configured if configured is not None else min(max(2 * k, k + 20), 2000)
    return max(pool, k)


def request_scorer_options(scorer: type[Scorer], name: str, configured: dict[str, Any],
                           overrides: dict[str, Any]) -> BaseModel:
    """``scorer``'s options for one request: ``overrides`` (``RecommendRequest.scorer_options``)
    over the ``configured`` ones, validated by its ``Options``; a :class:`RequestError` (422)
    naming ``scorer_options.<name>.<option>`` otherwise."""
    try:
        return scorer.Options.model_validate({**configured, **overrides})
    except ValidationError as exc:
        errors = exc.errors()
        if len(errors) == 1 and errors[0]["loc"]:
            where = ".".join(str(part) for part in errors[0]["loc"])
            raise RequestError(f"scorer_options.{name}.{where}", errors[0]["msg"].removeprefix("Value error, ")) from None
        raise RequestError(f"scorer_options.{name}", validation_problems(exc)) from None


def check_scorer_options(configured: Sequence[ComponentSpec], requested: dict[str, dict[str, Any]],
                         scope: str = "on this server") -> None:
    """Raise the 422 a request's ``scorer_options`` deserve, before any stage runs: each name must
    be a configured scorer (``scope``: on the server, or for an experiment arm with its own), and its
    options valid over each configured entry of that name."""
    from rayrec.plugins import get_component

    names = [spec.name for spec in configured]
    for name, overrides in requested.items():
        if name not in names:
            known = ", ".join(dict.fromkeys(names)) or "none"
            raise RequestError(f"scorer_options.{name}", f"no scorer {name!r} is configured {scope} "
                                                         f"(configured: {known})")
        for spec in configured:
            if spec.name == name:
                request_scorer_options(get_component("scorer", name), name, spec.options, overrides)


def new_item_calibration(model: RecommenderModel, options: NewItemOptions):
    """The model's calibration of new items' scores, or None (off, or a model without one)."""
    calibration = getattr(model, "new_item_calibration", None)
    if not options.calibrate or calibration is None:
        return None
    return calibration(options.boost)


class RetrievalLogic:
    """Scores the catalogue for one user vector and returns the top ``k`` with explanations.

    Order of work: refresh the catalogue from the state store if its version moved; mask out
    deleted, disliked, excluded, already-seen and attribute-filtered items; exact or ANN
    top-K (a larger pool, :func:`rerank_pool_size`, when re-rankers or filters run); the
    configured scorers in order, each ranking the previous one's output; every
    ``filter_candidates`` hook implementation in turn (they drop, never re-order); cut to
    ``k``; explain. Answers report the model's score as ``score`` whatever a scorer does.
    """

    def __init__(
        self,
        model: RecommenderModel,
        store: BaseStateStore,
        item_records: Mapping[str, dict[str, Any]] | None = None,
        scorers: Sequence[Scorer] = (),
        candidate_filters: Sequence[CandidateFilter] = (),
        exact_search_max_items: int = 250_000,
        ann_options: dict[str, int | None] | None = None,
        filter_seen: bool = True,
        candidate_sources: Sequence[CandidateSource] = (),
        search: SearchOptions | None = None,
        new_items: NewItemOptions | None = None,
        rerank_pool: int | None = None,
        vectors: str = "float32",
        pq_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.rerank_pool = rerank_pool
        self.candidate_sources = list(candidate_sources)
        self.store = store
        self.scorers = list(scorers)
        self._request_scorers: dict[tuple[str, int, str], Scorer] = {}
        # Experiment arms with re-rankers of their own: built on an arm's first request.
        self.experiment = RunningExperiment(store)
        self._arm_scorers: dict[str, list[Scorer]] = {}
        for scorer in self.scorers:
            if scorer.sorts_by_score():
                logger.warning("scorer %r uses the deprecated score() form: rename it to rerank() and return "
                               "the candidates in the order to show them (see rayrec.components.Scorer)", scorer.name)
        self.candidate_filters = list(candidate_filters)
        self.filter_seen = filter_seen
        ann = {key: value for key, value in (ann_options or {}).items() if value is not None}  # None: scaled
        pq = pq_options or {}
        m = ann.get("m", DEFAULT_M)
        saved_ann, saved_codes = self._saved_indexes(model, vectors, m, pq.get("code_bytes"), exact_search_max_items,
                                                     ann.get("ef_construction"))
        # A loaded graph is searched as broadly as export chose for it, unless configured.
        recorded = ((getattr(model, "config", None) or {}).get("item_index") or {}) if saved_ann is not None else {}
        vocabulary = item_vocabulary(model)
        self.index = ItemIndex(
            vocabulary,
            model.item_embeddings,
            model.item_popularity,
            exact_max_items=exact_search_max_items,
            hnsw_m=m,
            ef_construction=ann.get("ef_construction"),
            ef_search=ann.get("ef_search", recorded.get("ef_search")),
            new_item_calibration=new_item_calibration(model, new_items or NewItemOptions()),
            ann_index=saved_ann,
            vector_kind=vectors,
            pq_code_bytes=pq.get("code_bytes"),
            pq_rerank=pq.get("rerank", 1000),
            codes_index=saved_codes,
        )
        self.records = CatalogRecords(item_records)
        self.trained_items = TrainedItems(vocabulary)
        # Items added after training, oldest first: kept here so candidate sources need not
        # scan the whole catalogue per request (100k records cost ~10 ms in Python).
        self.added_items: dict[str, None] = {}
        self._attribute_masks: dict[tuple[str, str], np.ndarray] = {}
        self._attribute_names: set[str] | None = None
        self.catalog_version = 0
        # Before the first refresh, so catalogue changes reach it like they reach the index.
        self.text_search = TextSearch.for_model(model, self.index.row_ids, self.records, search,
                                                exact_search_max_items, ann) if search else None
        self.refresh()

    @property
    def model_version(self) -> str:
        return str(self.model.version)

    # -- the catalogue ---------------------------------------------------------------------
    def refresh(self) -> int:
        """Apply catalogue changes made since the last refresh (by any replica); cheap when none."""
        version = self.store.catalog_version()
        if version == self.catalog_version:
            return version
        changes = self.store.catalog_changes(self.catalog_version)
        new_items: list[str] = []
        new_records: list[dict[str, Any]] = []
        changed_text: dict[str, dict[str, Any]] = {}
        for change in changes:
            if change.deleted:
                self.index.delete(change.item_id)
                continue
            record = {"item_id": change.item_id, **change.record}
            self.records[change.item_id] = record
            changed_text[change.item_id] = record
            if change.item_id in self.trained_items:
                # A trained item keeps its learned vector; only its metadata changed.
                self.index.revive(change.item_id)
            else:
                new_items.append(change.item_id)
                new_records.append(record)
                self.added_items.setdefault(change.item_id)
        if new_items:
            try:
                vectors = np.asarray(self.model.encode_items(new_records), dtype=np.float32)
            except Exception:
                # Content the model cannot encode (e.g. stored under an earlier model) must not
                # fail every request: those items are just not recommendable by this model.
                logger.exception("cannot encode %d catalogue items; they are left out", len(new_items))
                vectors = None
            if vectors is not None:
                self.index.upsert(new_items, vectors)
        if self.text_search is not None:
            try:
                self.text_search.update(self.index, {i: r for i, r in changed_text.items() if i in self.index.row_of})
            except Exception:  # same policy as above: unsearchable, never a failed request
                logger.exception("cannot encode the text of %d catalogue items for search", len(changed_text))
        self._attribute_masks.clear()
        self._attribute_names = None
        self.catalog_version = max([version] + [c.version for c in changes])
        return self.catalog_version

    def validate_item(self, item: ItemIn) -> dict[str, Any]:
        """Check the item's content can be encoded by this model; returns the record to store."""
        record = item.model_dump()
        try:
            vector = np.asarray(self.model.encode_items([record]), dtype=np.float32)
        except Exception as exc:  # the model rejected the content
            raise RequestError("body", f"the model cannot encode this item: {exc}") from exc
        if vector.shape != (1, self.index.dim) or not np.all(np.isfinite(vector)):
            raise RequestError("body", "the model produced no usable vector for this item's content")
        return record

    def put_item(self, item_id: str, item: ItemIn) -> int:
        record = self.validate_item(item)
        version = self.store.put_item(item_id, record)
        self.refresh()
        return version

    def item(self, item_id: str) -> dict[str, Any]:
        """The metadata of a live item (the catalogue as this replica sees it)."""
        self.refresh()
        if item_id not in self.index:
            raise NotFoundError("item_id", f"unknown item {item_id!r}")
        return self._metadata(item_id)

    def _metadata(self, item_id: str) -> dict[str, Any]:
        record = self.records.get(item_id, {})
        categories = record.get("categories") or []
        return {
            "item_id": item_id,
            "title": str(record.get("title") or ""),
            "text": str(record.get("text") or ""),
            "categories": [categories] if isinstance(categories, str) else [str(c) for c in categories],
        }

    def delete_item(self, item_id: str) -> int:
        self.refresh()
        if item_id not in self.index:
            raise NotFoundError("item_id", f"unknown item {item_id!r}")
        version = self.store.delete_item(item_id)
        self.refresh()
        return version

    @staticmethod
    def _saved_indexes(model: Any, vectors: str, m: int, code_bytes: int | None, exact_search_max_items: int,
                       ef_construction: int | None = None):
        """(HNSW graph, flat codes) saved in the model directory that this configuration
        searches, each None where not saved (or not needed): the float32 graph ``rayrec train``
        exports (not when a configured ``ef_construction`` differs from its own), the compressed
        ones ``rayrec index build`` writes."""
        model_dir = getattr(model, "model_dir", None)
        if model_dir is None:
            return None, None
        config, rows = getattr(model, "config", {}), len(model.item_ids)
        graph = rows > exact_search_max_items
        if vectors == "float32":
            return (read_index(model_dir, config, rows, m, ef_construction) if graph else None), None
        saved = read_compressed(model_dir, config, rows, vectors, "hnsw" if graph else "flat", m=m,
                                code_bytes=code_bytes)
        return (saved, None) if graph else (None, saved)

    # -- filters -----------------------------------------------------------------------------
    def _allowed(self, excluded, filters: dict[str, Any]) -> tuple[np.ndarray, bool]:
        """Rows that are live, not in ``excluded`` and pass the attribute ``filters``; and
        whether any attribute filter applied."""
        allowed = self.index.allowed_mask(excluded)
        attribute_mask = self._attribute_mask(filters)
        if attribute_mask is None:
            return allowed, False
        return allowed & attribute_mask, True

    def _attribute_mask(self, filters: dict[str, Any]) -> np.ndarray | None:
        if not filters:
            return None
        if self._attribute_names is None:
            self._attribute_names = self.records.attribute_names()
        mask = None
        for key, wanted in filters.items():
            if key not in self._attribute_names:
                known = ", ".join(sorted(self._attribute_names)) or "(no item metadata)"
                raise RequestError(f"filters.{key}", f"unknown item attribute {key!r}; known: {known}")
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            field_mask = np.zeros(len(self.index.row_ids), dtype=bool)
            for value in values:
                field_mask |= self._value_mask(key, value)
            mask = field_mask if mask is None else mask & field_mask
        return mask

    def _value_mask(self, key: str, value: str) -> np.ndarray:
        cached = self._attribute_masks.get((key, value))
        if cached is not None and len(cached) == len(self.index.row_ids):
            return cached
        mask = self.records.matching_mask(key, value, self.index.row_of, len(self.index.row_ids))
        self._attribute_masks[(key, value)] = mask
        return mask

    # -- recommend ---------------------------------------------------------------------------
    def recommend(
        self,
        request: PreparedRequest,
        user_vector: np.ndarray | None,
        attributions: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """``scores``: every row's score for ``user_vector`` when the caller computed them for a
        batch of requests (:meth:`ItemIndex.scores_many`)."""
        self.refresh()
        excluded = set(request.exclude)
        if self.filter_seen:
            excluded |= request.seen
        allowed, filtered = self._allowed(excluded, request.filters)

        scorers = self._scorers_for(request)
        rerank = bool(scorers or self.candidate_filters)
        pool = rerank_pool_size(request.k, self.rerank_pool) if rerank else request.k
        if user_vector is None:
            source = "popular"
            rows, scores = ItemIndex.top_rows(self.index.relative_popularity(), pool, allowed)
        else:
            source = request.source
            # A filter can leave the ANN neighbourhood empty.
            rows, scores = self.index.search(user_vector, pool, allowed, exact=filtered, scores=scores)

        candidates = [Candidate(item_id=self.index.row_ids[r], score=float(s)) for r, s in zip(rows, scores)]
        sources = {c.item_id: source for c in candidates}
        if self.candidate_sources:
            for candidate, name in self._sourced(request, user_vector, allowed, pool, set(sources)):
                candidates.append(candidate)
                sources[candidate.item_id] = name
            candidates.sort(key=lambda c: -c.score)
        model_scores = {c.item_id: c.score for c in candidates}
        if rerank and candidates:
            candidates = self._rerank(candidates, request, scorers)
        candidates = candidates[: request.k]
        explanations = self._explain(candidates, request, attributions if user_vector is not None else None)
        items = []
        for c, because in zip(candidates, explanations):
            explanation: dict[str, Any] = {"because": because, "source": sources.get(c.item_id, source)}
            if c.explanation:
                explanation["notes"] = [str(note) for note in c.explanation]
            item: dict[str, Any] = {"item_id": c.item_id, "score": model_scores.get(c.item_id, c.score),
                                    "explanation": explanation}
            if scorers:
                item["rank_score"] = c.score
            items.append({**item, **self._included(c.item_id, request.include)})
        return {"user_id": request.user_id, "model_version": self.model_version, "items": items}

    def _included(self, item_id: str, fields: list[str]) -> dict[str, Any]:
        """The metadata ``include`` asks for, as ``GET /items/{id}`` gives it."""
        if not fields:
            return {}
        record = self._metadata(item_id)
        return {name: record[name] for name in fields}

    def _sourced(self, request: PreparedRequest, user_vector: np.ndarray | None, allowed: np.ndarray, pool: int,
                 already: set[str]):
        """(candidate, source name) for items the candidate sources add to the pool, scored by the
        model when there is a user vector (so they compete fairly), else by the source."""
        context = ScoringContext(user_id=request.user_id or "", history=list(request.history_ids), now=time.time(),
                                 catalog=CatalogView(self.index.row_ids, self.index.popularity, self.records,
                                                     self.trained_items, list(self.added_items)))
        row_of = self.index.row_of
        for source in self.candidate_sources:
            for proposed in source.candidates(context, pool):
                row = row_of.get(proposed.item_id)
                if row is None or not allowed[row] or proposed.item_id in already:
                    continue
                already.add(proposed.item_id)
                score = float(self.index.row_scores([row], user_vector)[0]) if user_vector is not None else proposed.score
                yield Candidate(item_id=proposed.item_id, score=score), source.name

    def _context(self, candidates: list[Candidate], request: PreparedRequest) -> ScoringContext:
        row_of = self.index.row_of
        return ScoringContext(
            user_id=request.user_id or "",  # "" for an anonymous session
            history=list(request.history_ids),
            item_popularity={c.item_id: float(self.index.popularity[row_of[c.item_id]]) for c in candidates},
            item_categories={
                c.item_id: list(self.records.get(c.item_id, {}).get("categories", []) or []) for c in candidates
            },
            item_timestamps=self.store.item_last_seen([c.item_id for c in candidates]),
            now=time.time(),
        )

    def _for_request(self, position: int, scorer: Scorer, request: PreparedRequest) -> Scorer:
        """The scorer as this request's ``scorer_options`` configure it: the configured instance,
        or one built with the request's options over its own (kept for the next request that
        asks for the same, a few dozen at most)."""
        overrides = request.scorer_options.get(scorer.name)
        if not overrides:
            return scorer
        options = request_scorer_options(type(scorer), scorer.name, scorer.options.model_dump(), overrides)
        key = (scorer.name, position, json.dumps(options.model_dump(mode="json"), sort_keys=True, default=str))
        built = self._request_scorers.get(key)
        if built is None:
            if len(self._request_scorers) >= MAX_REQUEST_SCORERS:
                self._request_scorers.clear()
            built = self._request_scorers[key] = type(scorer)(options)
        return built

    def _scorers_for(self, request: PreparedRequest) -> list[Scorer]:
        """The re-rankers that answer ``request``: its experiment arm's own, else the server's."""
        if request.arm is None:
            return self.scorers
        record = self.experiment.get()
        if record is None or request.arm not in record["arms"]:  # started since this replica last looked
            self.experiment.forget()
            record = self.experiment.get()
        specs = arm_scorers(record, request.arm)
        if specs is None:
            return self.scorers
        key = json.dumps([spec.model_dump(mode="json") for spec in specs], sort_keys=True, default=str)
        built = self._arm_scorers.get(key)
        if built is None:
            from rayrec import plugins

            built = self._arm_scorers[key] = [plugins.create_component("scorer", spec.name, spec.options)
                                              for spec in specs]
        return built

    def _rerank(self, candidates: list[Candidate], request: PreparedRequest,
                scorers: Sequence[Scorer]) -> list[Candidate]:
        context = self._context(candidates, request)
        for position, scorer in enumerate(scorers):
            scorer = self._for_request(position, scorer, request)
            if scorer.sorts_by_score():  # the deprecated form: its order is that of its scores
                candidates = sorted(scorer.score(candidates, context), key=lambda c: -c.score)
            else:
                candidates = list(scorer.rerank(candidates, context))
        order = {c.item_id: position for position, c in enumerate(candidates)}
        for candidate_filter in self.candidate_filters:
            kept = candidate_filter(candidates=candidates, context=context)
            if kept is not None:
                candidates = list(kept)
        # Filters drop; the order stays the scorers' (for an item a filter made up: last).
        candidates.sort(key=lambda c: order.get(c.item_id, len(order)))
        # A re-ranker must not bring back what the user may never see.
        forbidden = set(request.exclude) | (request.seen if self.filter_seen else set())
        return [c for c in candidates if c.item_id in self.index and c.item_id not in forbidden]

    def _explain(
        self, candidates: list[Candidate], request: PreparedRequest, attributions: np.ndarray | None
    ) -> list[list[str]]:
        """Per candidate, the history items with the largest attribution x cosine similarity."""
        if attributions is None or not request.history_ids or not candidates:
            return [[] for _ in candidates]
        row_of = self.index.row_of
        positions = [(p, row_of.get(item_id)) for p, item_id in enumerate(request.history_ids)]
        positions = [(p, r) for p, r in positions if r is not None and p < len(attributions)]
        if not positions:
            return [[] for _ in candidates]
        history_rows = np.array([r for _, r in positions])
        weights = np.asarray(attributions, dtype=np.float32)[[p for p, _ in positions]]
        history_ids = [request.history_ids[p] for p, _ in positions]
        candidate_rows = np.array([row_of[c.item_id] for c in candidates])
        similarity = self.index.unit_rows(candidate_rows) @ self.index.unit_rows(history_rows).T  # (C, H)
        contribution = similarity * weights[None, :]
        result = []
        for row in contribution:
            totals: dict[str, float] = {}
            for item_id, value in zip(history_ids, row):
                totals[item_id] = totals.get(item_id, 0.0) + float(value)
            best = max(totals.values())
            # Negligible contributors would only confuse a reader of the explanation.
            ranked = sorted((v, i) for i, v in totals.items() if v > 0 and v >= EXPLANATION_MIN_SHARE * best)
            result.append([i for _, i in reversed(ranked[-EXPLANATION_ITEMS:])])
        return result

    # -- natural-language search ---------------------------------------------------------------
    def encode_query(self, query: str) -> np.ndarray:
        """The query's vector (seconds on first use: the text model loads); 404 when search is off."""
        if self.text_search is None:
            raise NotFoundError("search", SEARCH_OFF_MESSAGE)
        return self.text_search.encode_query(query)

    def search(
        self,
        request: SearchRequest,
        query_vector: np.ndarray,
        prepared: PreparedRequest | None = None,
        user_vector: np.ndarray | None = None,
        attributions: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Items matching the query, blended with the user's taste when there is a user vector.

        Items the user already saw stay findable (search is a lookup); dislikes and
        ``exclude_items`` do not, and attribute filters apply as in ``recommend``.
        """
        if self.text_search is None:
            raise NotFoundError("search", SEARCH_OFF_MESSAGE)
        self.refresh()
        excluded = set(request.exclude_items) | (prepared.exclude if prepared is not None else set())
        allowed, _ = self._allowed(excluded, request.filters)
        rows, scores, retrieval = self.text_search.search(query_vector, request.k, allowed, self.index, user_vector)
        candidates = [Candidate(item_id=self.index.row_ids[r], score=float(s)) for r, s in zip(rows, scores)]
        personal = user_vector is not None and prepared is not None
        source = f"search+{prepared.source}" if personal else "search"
        explanations = (self._explain(candidates, prepared, attributions) if personal
                        else [[] for _ in candidates])
        return {
            "query": request.query,
            "user_id": request.user_id,
            "model_version": self.model_version,
            "retrieval": retrieval,
            "items": [
                {"item_id": c.item_id, "score": c.score, "explanation": {"because": because, "source": source},
                 **self._included(c.item_id, request.include)}
                for c, because in zip(candidates, explanations)
            ],
        }

    # -- item to item ------------------------------------------------------------------------
    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        self.refresh()
        if item_id not in self.index:
            raise NotFoundError("item_id", f"unknown item {item_id!r}")
        row = self.index.row_of[item_id]
        rows, scores, retrieval = self.index.similar(row, k, self.index.allowed_mask([item_id]))
        return {
            "item_id": item_id,
            "model_version": self.model_version,
            "retrieval": retrieval,
            "items": [
                {
                    "item_id": self.index.row_ids[r],
                    "score": float(s),
                    "explanation": {"because": [item_id], "source": "similar"},
                }
                for r, s in zip(rows, scores)
            ],
        }
