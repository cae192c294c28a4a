"""The Ray Serve deployments: thin shells around the stage logic.

Each shell opens the state store, keeps its stage logic (:mod:`rayrec.serving.stages`) per
model generation (:class:`~rayrec.serving.stages.generations.ModelSlots`), offloads model loads
and disk writes to a thread so the replica keeps answering, and exposes ``preload`` for hot
reloads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
from ray import serve

from rayrec.components import FeedbackEvent
from rayrec.errors import ModelError
from rayrec.serving.config import AppArgs
from rayrec.serving.experiments.live import running_experiment
from rayrec.models.servable import load_model_dir
from rayrec.serving.graph.model_loading import item_records
from rayrec.serving.graph.observability import resident_mb, serving_metrics
from rayrec.serving.schemas import ItemIn, PreparedRequest, RecommendRequest, SearchRequest
from rayrec.serving.stages.encode import HistoryEncoderLogic
from rayrec.serving.stages.errors import RequestError, StageError
from rayrec.serving.stages.feedback import FeedbackLogic
from rayrec.serving.stages.generations import ModelSlots
from rayrec.serving.stages.pipeline import PipelineLogic
from rayrec.serving.stages.preprocess import PreprocessorLogic
from rayrec.serving.stages.scoring import RetrievalLogic
from rayrec.state import open_state_store
from rayrec.state.base import Impression, ModelGeneration

logger = logging.getLogger("ray.serve")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def request_errors_as_values(method: F) -> F:
    """Return a :class:`StageError` for a bad request instead of raising it (see there)."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except RequestError as exc:
            return StageError(exc)

    return wrapper  # type: ignore[return-value]


def timed(method: F) -> F:
    """Record the call in the stage metrics (``self.stage``): latency and outcome.

    Outcomes: ``ok``, ``rejected`` (a bad request, returned as a StageError) or ``error``.
    """

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await method(self, *args, **kwargs)
            outcome = "rejected" if isinstance(result, StageError) else "ok"
            return result
        finally:
            serving_metrics().record_stage(self.stage, time.perf_counter() - started, outcome)

    return wrapper  # type: ignore[return-value]


def limit_threads(threads: int) -> None:
    """One compute thread per replica: the env vars set BLAS/OpenMP at process start; this
    also caps libraries loaded since (torch, and BLAS through threadpoolctl where installed)."""
    if "torch" in sys.modules:  # only models that use torch pay for importing it
        torch = sys.modules["torch"]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


def components(kind: str, specs) -> list:
    from rayrec import plugins

    return [plugins.create_component(kind, spec.name, spec.options) for spec in specs]


class _ModelStage:
    """Shared shell behaviour: a store, model slots, async-safe lazy loading."""

    stage = "stage"  # the ``stage`` tag of this deployment's metrics

    def _init_stage(self, args: AppArgs) -> None:
        self.args = args
        self.store = open_state_store(args.state)
        self.slots = ModelSlots(self.store, self._build)
        self._load_lock = asyncio.Lock()
        self.slots.get()  # the live model, loaded before the replica takes traffic
        experiment = running_experiment(self.store)
        for arm in (experiment or {}).get("arms", {}).values():  # and a running experiment's arms
            self.slots.get(arm["generation"])
        limit_threads(args.replica.threads)

    def _build(self, record: ModelGeneration) -> Any:  # pragma: no cover - per stage
        raise NotImplementedError

    async def _logic(self, generation: int | None = None):
        if generation is None:
            generation = self.slots.live_generation()
        if self.slots.has(generation):
            logic = self.slots.get(generation)
        else:
            async with self._load_lock:  # load off the event loop: in-flight requests continue
                logic = await asyncio.to_thread(self.slots.load, generation)
            limit_threads(self.args.replica.threads)
        serving_metrics().record_model(self.stage, generation, str(logic.model.version))
        return logic

    @request_errors_as_values
    async def preload(self, generation: int) -> dict[str, Any]:
        """Load ``generation`` ahead of its activation: its model version, and the resident memory
        the load added to this replica (MB; 0 when it was loaded already, None off Linux)."""
        before = resident_mb()
        try:
            logic = await self._logic(generation)
        except ModelError as exc:
            raise RequestError("model_dir", str(exc)) from None
        after = resident_mb()
        added = None if before is None or after is None else round(max(after - before, 0.0), 1)
        return {"version": str(logic.model.version), "added_resident_mb": added}

    def check_health(self) -> None:
        self.store.catalog_version()  # raises if the state store is unreachable


@serve.deployment
class Preprocessor(_ModelStage):
    stage = "preprocessor"

    def __init__(self, args: AppArgs) -> None:
        self.extractors = components("feature_extractor", args.feature_extractors)
        self._init_stage(args)

    def _build(self, record: ModelGeneration) -> PreprocessorLogic:
        return PreprocessorLogic(
            load_model_dir(record.model_dir), self.store, self.args.event_weights, record.generation, self.extractors
        )

    @timed
    async def prepare(self, request: RecommendRequest, generation: int | None = None) -> PreparedRequest:
        logic = await self._logic(generation)  # pins the request to the live generation, or an arm's
        return logic.prepare(request)


@serve.deployment
class HistoryEncoder(_ModelStage):
    stage = "user_encoder"

    def __init__(self, args: AppArgs) -> None:
        self._init_stage(args)
        # The one place batching is configured: AppArgs.batching (max_size, wait_timeout_s).
        self.encode_batch.set_max_batch_size(args.batching.max_size)
        self.encode_batch.set_batch_wait_timeout_s(args.batching.wait_timeout_s)

    def _build(self, record: ModelGeneration) -> HistoryEncoderLogic:
        logic = HistoryEncoderLogic(load_model_dir(record.model_dir))
        logic.encode([[0]])  # warm: the first torch call pays for lazy initialisation
        return logic

    @timed
    async def encode(self, generation: int, history: list[int]) -> tuple[np.ndarray | None, np.ndarray]:
        return await self.encode_batch((generation, history))

    @serve.batch  # sized in __init__ from AppArgs
    async def encode_batch(self, requests: list[tuple[int, list[int]]]) -> list[tuple[np.ndarray | None, np.ndarray]]:
        results: list[Any] = [None] * len(requests)
        by_generation: dict[int, list[int]] = {}
        for position, (generation, _) in enumerate(requests):
            by_generation.setdefault(generation, []).append(position)
        for generation, positions in by_generation.items():
            logic = await self._logic(generation)
            encoded = logic.encode([requests[p][1] for p in positions])
            for position, result in zip(positions, encoded):
                results[position] = result
        return results


class _CatalogueMethods:
    """What the ingress asks of whichever deployment holds the scorer (Retriever in the
    split topology, RecommendPipeline in the fused one): catalogue reads and writes, item to
    item, search, status. ``_scorer`` returns that deployment's RetrievalLogic for a generation."""

    stage: str

    def _init_scoring(self, args: AppArgs) -> None:
        from rayrec import plugins

        self.scorers = components("scorer", args.scorers)
        self.candidate_sources = components("candidate_source", args.candidate_sources)
        self.candidate_filters = [impl.function for impl in plugins.load_plugins().hook.filter_candidates.get_hookimpls()]
        self._recall_probe: asyncio.Task | None = None

    def _build_scorer(self, model: Any, model_dir: str) -> RetrievalLogic:
        return RetrievalLogic(
            model,
            self.store,
            item_records(model, model_dir),
            scorers=self.scorers,
            candidate_filters=self.candidate_filters,
            exact_search_max_items=self.args.retrieval.exact_search_max_items,
            ann_options=self.args.retrieval.ann.model_dump(),
            vectors=self.args.retrieval.vectors.value,
            pq_options=self.args.retrieval.pq.model_dump(),
            filter_seen=self.args.retrieval.filter_seen,
            candidate_sources=self.candidate_sources,
            search=self.args.search,
            new_items=self.args.new_items,
            rerank_pool=self.args.retrieval.rerank_pool,
        )

    async def _scorer(self, generation: int | None = None) -> RetrievalLogic:  # pragma: no cover - per class
        raise NotImplementedError

    def _start_recall_probe(self) -> None:
        """Sample the index's recall@10 every ``ann_recall_probe_interval_s`` (started on first use:
        the constructor has no running event loop to attach a task to)."""
        if self._recall_probe is None and self.args.observability.ann_recall_probe_interval_s > 0:
            self._recall_probe = asyncio.get_running_loop().create_task(self._probe_recall_forever())

    async def _probe_recall_forever(self) -> None:
        while True:
            try:
                scorer = await self._scorer()
                # On the event loop, like every index change: a handful of queries, and exact
                # search only when an ANN index exists (else recall is 1 by construction).
                serving_metrics().record_ann_recall(scorer.index.recall_at_k(samples=8, k=10))
            except Exception:
                logger.exception("the ANN recall probe failed")
            await asyncio.sleep(self.args.observability.ann_recall_probe_interval_s)

    async def _search(self, scorer: RetrievalLogic, request: SearchRequest, prepared: PreparedRequest | None,
                      user_vector: np.ndarray | None, attributions: np.ndarray | None) -> dict[str, Any]:
        # The text model runs off the event loop (tens of ms); it releases the GIL while it computes.
        query_vector = await asyncio.to_thread(scorer.encode_query, request.query)
        return scorer.search(request, query_vector, prepared, user_vector, attributions)

    @timed
    @request_errors_as_values
    async def similar(self, item_id: str, k: int) -> dict[str, Any]:
        return (await self._scorer()).similar(item_id, k)

    @timed
    @request_errors_as_values
    async def put_item(self, item_id: str, item: ItemIn) -> dict[str, Any]:
        # On the event loop, not in a thread: the item index is only ever changed from the
        # loop, so a concurrent recommend never sees it half updated.
        version = (await self._scorer()).put_item(item_id, item)
        return {"item_id": item_id, "catalog_version": version, "status": "upserted"}

    @request_errors_as_values
    async def item(self, item_id: str) -> dict[str, Any]:
        return (await self._scorer()).item(item_id)

    @timed
    @request_errors_as_values
    async def delete_item(self, item_id: str) -> dict[str, Any]:
        version = (await self._scorer()).delete_item(item_id)
        return {"item_id": item_id, "catalog_version": version, "status": "deleted"}

    async def status(self) -> dict[str, Any]:
        scorer = await self._scorer()
        return {"model_version": scorer.model_version, "search": scorer.text_search is not None,
                "item_vectors": scorer.index.describe()}


@serve.deployment
class Retriever(_CatalogueMethods, _ModelStage):
    stage = "scorer"

    def __init__(self, args: AppArgs) -> None:
        self.args = args
        self._init_scoring(args)
        self._init_stage(args)

    def _build(self, record: ModelGeneration) -> RetrievalLogic:
        return self._build_scorer(load_model_dir(record.model_dir), record.model_dir)

    async def _scorer(self, generation: int | None = None) -> RetrievalLogic:
        return await self._logic(generation)

    @timed
    @request_errors_as_values
    async def recommend(
        self, request: PreparedRequest, user_vector: np.ndarray | None, attributions: np.ndarray | None
    ) -> dict[str, Any]:
        self._start_recall_probe()
        logic = await self._logic(request.generation)
        return logic.recommend(request, user_vector, attributions)

    @timed
    @request_errors_as_values
    async def search(
        self, request: SearchRequest, prepared: PreparedRequest | None, user_vector: np.ndarray | None,
        attributions: np.ndarray | None,
    ) -> dict[str, Any]:
        logic = await self._logic(prepared.generation if prepared is not None else None)
        return await self._search(logic, request, prepared, user_vector, attributions)


@serve.deployment
class RecommendPipeline(_CatalogueMethods, _ModelStage):
    """Preprocess, encode and score in one replica (``topology: fused``): the same logic classes
    as the split graph, one handle hop instead of three. Scales as one unit; no request batching
    across users (each request is encoded on its own, which is what batching does at low load)."""

    stage = "pipeline"

    def __init__(self, args: AppArgs) -> None:
        self.args = args
        self.extractors = components("feature_extractor", args.feature_extractors)
        self._init_scoring(args)
        self._init_stage(args)
        self._recommend_batch.set_max_batch_size(args.batching.max_size)
        self._recommend_batch.set_batch_wait_timeout_s(args.batching.wait_timeout_s)

    def _build(self, record: ModelGeneration) -> PipelineLogic:
        model = load_model_dir(record.model_dir)  # one copy of the model for the three stages
        logic = PipelineLogic(
            PreprocessorLogic(model, self.store, self.args.event_weights, record.generation, self.extractors),
            HistoryEncoderLogic(model),
            self._build_scorer(model, record.model_dir),
        )
        logic.warm_up()
        return logic

    async def _scorer(self, generation: int | None = None) -> RetrievalLogic:
        return (await self._logic(generation)).scorer

    @timed
    @request_errors_as_values
    async def recommend_for(self, request: RecommendRequest, generation: int | None = None) -> dict[str, Any]:
        self._start_recall_probe()
        if generation is None:  # pinned here, so a batch never straddles a reload
            generation = self.slots.live_generation()
        return await self._recommend_batch((request, generation))

    @serve.batch  # sized in __init__ from AppArgs, like the user encoder's
    async def _recommend_batch(
        self, requests: list[tuple[RecommendRequest, int]]
    ) -> list[dict[str, Any] | StageError]:
        """Requests that arrived while the previous batch computed, answered together, each
        generation (the live model, experiment arms) by its own pipeline."""
        answers: list[Any] = [None] * len(requests)
        by_generation: dict[int, list[int]] = {}
        for position, (_, generation) in enumerate(requests):
            by_generation.setdefault(generation, []).append(position)
        for generation, positions in by_generation.items():
            logic = await self._logic(generation)
            for position, answer in zip(positions, logic.recommend_many([requests[p][0] for p in positions])):
                answers[position] = answer
        return answers

    @timed
    @request_errors_as_values
    async def search_for(self, request: SearchRequest) -> dict[str, Any]:
        logic = await self._logic()
        prepared = vector = attributions = None
        if request.user_id is not None:
            prepared, vector, attributions = logic.prepare_and_encode(request.as_recommend_request())
        return await self._search(logic.scorer, request, prepared, vector, attributions)


@serve.deployment
class FeedbackIngestor:
    """The write path for user data, and the switch of the live model generation."""

    stage = "feedback"

    def __init__(self, args: AppArgs) -> None:
        from rayrec import plugins

        pm = plugins.load_plugins()
        self.store = open_state_store(args.state)
        self._write_lock = asyncio.Lock()
        self.logic = FeedbackLogic(
            self.store,
            args.event_weights,
            handlers=components("feedback_handler", args.feedback_handlers),
            on_ingested=lambda events: pm.hook.feedback_ingested(events=events),
            max_batch=args.limits.max_feedback_batch,
        )

    @timed
    @request_errors_as_values
    async def ingest(self, events: list[FeedbackEvent], received_at: float | None = None) -> dict[str, int]:
        """Store ``events`` durably; ``received_at`` (when the ingress got them) gives the freshness lag."""
        # The fsync of the commit happens off the event loop; one batch at a time (SQLite has
        # one writer anyway), so feedback handlers are never called concurrently.
        async with self._write_lock:
            result = await asyncio.to_thread(self.logic.ingest, events)
        lag = None if received_at is None else time.time() - received_at
        serving_metrics().record_feedback(result["stored"], result["duplicates"], lag)
        return result

    @timed
    @request_errors_as_values
    async def erase_user(self, user_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.logic.erase_user, user_id)

    async def stage_model(self, model_dir: str) -> int:
        return await asyncio.to_thread(self.store.stage_model, model_dir)

    async def activate_model(self, generation: int) -> None:
        await asyncio.to_thread(self.store.activate_model, generation)

    async def fail_model(self, generation: int) -> None:
        await asyncio.to_thread(self.store.fail_model, generation)

    async def stage_arm(self, model_dir: str) -> int:
        """Register an experiment arm's model: a generation that is served but never live."""
        def stage() -> int:
            generation = self.store.stage_model(model_dir)
            self.store.set_model_status(generation, "arm")
            return generation

        return await asyncio.to_thread(stage)

    async def retire_models(self, generations: list[int]) -> None:
        """Arms no longer served: replicas may unload them (see ModelSlots)."""
        for generation in generations:
            await asyncio.to_thread(self.store.set_model_status, generation, "retired")

    async def save_experiment(self, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self.store.save_experiment, record)

    async def record_impression(self, impression: Impression) -> None:
        await asyncio.to_thread(self.store.record_impression, impression)

    def check_health(self) -> None:
        self.store.catalog_version()
