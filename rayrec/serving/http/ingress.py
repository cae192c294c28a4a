"""The HTTP ingress: FastAPI routes (OpenAPI at ``/openapi.json``) over the graph's stages.

The routes validate, then hand reads to the topology's read path
(:mod:`rayrec.serving.graph.topology`) and writes to the FeedbackIngestor. Errors become
answers in :mod:`.error_handlers` (4xx naming the field, 503 with ``Retry-After``, 500 only for
bugs). Before any route runs, :class:`~rayrec.serving.http.security.RequestGuard` checks API
keys on the write and admin routes (those declared with ``WRITE_ACCESS``), caps the body size,
and times the request for the metrics and the request log.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real parameter types
# of the class-based routes that serve.ingress wraps.
import asyncio
import logging
import os
import pathlib
import time
import uuid
from typing import Any

from fastapi import Path, Query, Security
from fastapi.responses import HTMLResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec import __version__
from rayrec.components import FeedbackEvent
from rayrec.serving.config import AppArgs, component_problem
from rayrec.serving.experiments.live import (
    RunningExperiment,
    arm_scorer_options,
    arm_scorers,
    choose_arm,
    new_record,
    report,
    running_experiment,
)
from rayrec.serving.experiments.spec import NAME_PATTERN, ExperimentSpec
from rayrec.serving.graph.builder import model_dir_mb
from rayrec.serving.graph.observability import RequestLog, serving_metrics
from rayrec.serving.graph.topology import ReadPath
from rayrec.serving.http.error_handlers import install_error_handlers, openapi_errors
from rayrec.serving.http.security import (
    WRITE_ACCESS,
    GuardPolicy,
    RequestGuard,
    check_model_root,
    load_api_keys,
    replica_guard_policy,
)
from rayrec.serving.schemas import (
    MAX_ID_LENGTH,
    MAX_K,
    EraseResponse,
    ExperimentReport,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ItemChangeResponse,
    ItemIn,
    ItemOut,
    PromoteRequest,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SearchRequest,
    SearchResponse,
    SimilarItemsResponse,
)
from rayrec.serving.stages.errors import ConflictError, ForbiddenError, NotFoundError, RequestError, StageError
from rayrec.serving.stages.scoring import check_scorer_options
from rayrec.state import open_state_store
from rayrec.state.base import Impression

logger = logging.getLogger("ray.serve")

#: The demo page (plain HTML and JavaScript over this API), served at ``/`` and ``/demo``.
DEMO_PAGE = pathlib.Path(__file__).with_name("static") / "demo.html"

# FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files shipped with the
# package, not from a CDN (servers often have no way out to the internet).
app = FastAPIOffline(
    title="rayrec",
    version=__version__,
    description="Real-time recommendations from a two-tower model; feedback changes the next answer.",
)
app.add_middleware(RequestGuard, policy=replica_guard_policy)
install_error_handlers(app)
READ = openapi_errors()
WRITE = openapi_errors(401, 403)


def resident_cost(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """What loading a model cost: the resident memory it added, summed over the replicas that
    loaded it (None where a replica cannot tell), and how many replicas that was."""
    added = [load["added_resident_mb"] for load in loads]
    total = None if any(mb is None for mb in added) else round(sum(added), 1)
    return {"added_resident_mb": total, "replicas": len(loads)}


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, reads: ReadPath, feedback: DeploymentHandle, args: AppArgs) -> None:
        # ``reads`` is the topology: the read stages' handles, or (topology ingress) a
        # pipeline this replica builds for itself in start().
        self.reads = reads.start(args)
        self.feedback = feedback
        self.args = args
        # Reads of experiments (which arm answers, the readout); their writes go to the feedback stage.
        self.store = open_state_store(args.state)
        self.experiment = RunningExperiment(self.store)
        self._experiment_changes = asyncio.Lock()
        self.metrics = serving_metrics()
        self.request_log = RequestLog(args.observability.request_log) if args.observability.request_log else None
        # Keys are read here, in the replica, and kept only as digests; never logged.
        keys = load_api_keys(args.security.api_keys_file, env_var=args.security.api_keys_env)
        self.guard_policy = GuardPolicy(
            keys=keys, max_body_bytes=args.limits.max_body_bytes, retry_after_s=args.limits.retry_after_s,
            on_response=self._on_response,
        )
        logger.info("ingress ready: %s; writes %s", keys, "need an API key" if keys else "are open (no API keys configured)")

    def _on_response(self, method: str, route: str, status: int, seconds: float, body_bytes: int) -> None:
        """Called by the RequestGuard after every request: metrics, then the request log (enqueue only)."""
        self.metrics.record_request(method, route, status, seconds)
        if self.request_log is not None:
            self.request_log.log(method=method, route=route, status=status, ms=round(seconds * 1000, 3), bytes_in=body_bytes)

    def check_health(self) -> None:
        self.reads.check_health()

    def __del__(self) -> None:
        if getattr(self, "request_log", None) is not None:
            self.request_log.close()

    # exclude_unset: an item carries title/text/categories only when ``include`` asked for them.
    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_unset=True, responses=READ)
    async def recommend(self, request: RecommendRequest) -> Any:
        if request.k > self.args.limits.max_k:
            raise RequestError("k", f"at most {self.args.limits.max_k}")
        record = self.experiment.get()
        if record is None and request.arm is not None:
            raise RequestError("arm", "no experiment is running")
        arm = choose_arm(record, request.user_id, request.session_id, request.arm) if record else None
        if request.scorer_options:  # checked against the scorers that will answer: the arm's own, if any
            self._check_scorer_options(arm, arm_scorers(record, arm), request.scorer_options)
        if arm is None:  # no experiment, or neither user_id nor session_id: the live model answers
            return StageError.raise_for(await self.reads.recommend(request))
        # ``arm`` travels with the request so the scorer runs this arm's re-rankers.
        request = request.model_copy(update={
            "arm": arm, "scorer_options": arm_scorer_options(record, arm, request.scorer_options)})
        answer = StageError.raise_for(await self.reads.recommend(request, record["arms"][arm]["generation"]))
        impression = Impression(impression_id=uuid.uuid4().hex, experiment=record["name"], arm=arm,
                                item_ids=[item["item_id"] for item in answer["items"]])
        await self.feedback.record_impression.remote(impression)  # durable before the id is handed out
        return {**answer, "impression_id": impression.impression_id, "arm": arm}

    @app.post("/search", response_model=SearchResponse, response_model_exclude_unset=True, responses=openapi_errors(404))
    async def search(self, request: SearchRequest) -> Any:
        """Items whose content matches ``query``; with ``user_id``, blended with that user's taste.

        404 when this server has no text model for search (see ``search`` in the app arguments).
        """
        if request.k > self.args.limits.max_k:
            raise RequestError("k", f"at most {self.args.limits.max_k}")
        return StageError.raise_for(await self.reads.search(request))

    @app.post("/feedback", response_model=FeedbackResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def feedback(self, body: FeedbackRequest) -> Any:
        received_at = time.time()
        events = [FeedbackEvent(**event.model_dump()) for event in body.events]
        return StageError.raise_for(await self.feedback.ingest.remote(events, received_at))

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse, responses=openapi_errors(404))
    async def similar_items(
        self, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH), k: int = Query(10, ge=1, le=MAX_K)
    ) -> Any:
        if k > self.args.limits.max_k:
            raise RequestError("k", f"at most {self.args.limits.max_k}")
        return StageError.raise_for(await self.reads.similar(item_id, k))

    @app.get("/items/{item_id}", response_model=ItemOut, responses=openapi_errors(404))
    async def get_item(self, item_id: str = Path(min_length=1, max_length=512)) -> Any:
        return StageError.raise_for(await self.reads.item(item_id))

    @app.put("/items/{item_id}", response_model=ItemChangeResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def put_item(self, item: ItemIn, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH)) -> Any:
        return StageError.raise_for(await self.reads.put_item(item_id, item))

    @app.delete(
        "/items/{item_id}", response_model=ItemChangeResponse, responses=openapi_errors(401, 403, 404),
        dependencies=[Security(WRITE_ACCESS)],
    )
    async def delete_item(self, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH)) -> Any:
        return StageError.raise_for(await self.reads.delete_item(item_id))

    @app.delete("/users/{user_id}", response_model=EraseResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def erase_user(self, user_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH)) -> Any:
        return StageError.raise_for(await self.feedback.erase_user.remote(user_id))

    @app.post("/admin/reload", response_model=ReloadResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def reload(self, body: ReloadRequest) -> Any:
        """Load the model in every replica of every stage, then switch all of them at once.

        Requests are pinned to a generation by the preprocessor, so a request that started on
        the old model finishes on it; replicas that missed the broadcast (or start later)
        load the new generation on first use. A directory outside ``model_roots`` is refused
        (403) before anything reads it; one that does not load is refused (422) and the
        current model keeps serving.
        """
        model_dir = self._allowed_model_dir(body.model_dir, "model_dir")
        generation = await self.feedback.stage_model.remote(model_dir)
        try:
            loads = await self._preload_in_every_holder(generation)
        except BaseException:
            await self.feedback.fail_model.remote(generation)
            raise
        await self.feedback.activate_model.remote(generation)
        version = loads[0]["version"] if loads else ""
        logger.info("model generation %d (%s) from %s is live", generation, version, model_dir)
        return {"model_version": version, "generation": generation, "model_dir": model_dir}

    def _check_scorer_options(self, arm: str | None, arm_scorers: list | None,
                              options: dict[str, dict[str, Any]]) -> None:
        """``options`` against the scorers that answer: ``arm``'s own where it has them, else the server's."""
        if arm_scorers is None:
            check_scorer_options(self.args.scorers, options)
        else:
            check_scorer_options(arm_scorers, options, f"for arm {arm!r}")

    def _allowed_model_dir(self, path: str, field: str) -> str:
        """``path`` resolved, if it is absolute and inside ``model_roots`` (else 422 / 403 naming ``field``)."""
        if not os.path.isabs(path):
            raise RequestError(field, "must be an absolute path (replicas may run in another directory)")
        try:
            return check_model_root(path, self.args.security.model_roots)
        except PermissionError as exc:
            raise ForbiddenError(field, str(exc)) from None
        except (ValueError, OSError) as exc:  # e.g. an embedded NUL byte
            raise RequestError(field, f"not a usable path ({exc})") from None

    async def _preload_in_every_holder(self, generation: int) -> list[dict[str, Any]]:
        """Load ``generation`` in every replica that holds a model: per replica, the model version
        and the resident memory the load added (a 422 if it does not load)."""
        holders = self.reads.model_holders()
        groups = await asyncio.gather(*(self._preload_everywhere(handle, generation) for handle in holders))
        return [StageError.raise_for(load) for group in groups for load in group]

    # -- experiments ---------------------------------------------------------------------------
    @app.post("/admin/experiments", response_model=ExperimentReport, status_code=201,
              responses=openapi_errors(401, 403, 409), dependencies=[Security(WRITE_ACCESS)])
    async def start_experiment(self, spec: ExperimentSpec) -> Any:
        """Start an A/B test: every arm's model is loaded in every replica before any user sees it.

        Refused, with the running experiment (if any) serving on: 422 for a bad spec (shares not
        summing to 1, duplicate arm names, a model directory that does not exist or load), 403
        for a directory outside ``model_roots``, 409 while another experiment runs or when the
        name was used before. An arm whose model directory is the live model's reuses it.
        """
        problem = spec.problems(set(self.args.event_weights))
        if problem is not None:
            raise RequestError(*problem)
        model_dirs = []
        for i, arm in enumerate(spec.arms):
            field = f"arms[{i}].model_dir"
            model_dir = self._allowed_model_dir(arm.model_dir, field)
            if not os.path.isdir(model_dir):
                raise RequestError(field, f"no model directory at {model_dir}")
            model_dirs.append(model_dir)
            for j, scorer in enumerate(arm.scorers or []):
                problem = component_problem("scorer", scorer)
                if problem is not None:
                    raise RequestError(f"arms[{i}].scorers[{j}]", problem)
            if arm.scorer_options:
                try:
                    self._check_scorer_options(arm.name, arm.scorers, arm.scorer_options)
                except RequestError as exc:
                    raise RequestError(f"arms[{i}].{exc.field}", exc.message) from None
        async with self._experiment_changes:
            running = await asyncio.to_thread(running_experiment, self.store)
            if running is not None:
                raise ConflictError("name", f"experiment {running['name']!r} is running; stop or promote it first")
            if await asyncio.to_thread(self.store.experiment, spec.name) is not None:
                raise ConflictError("name", f"an experiment named {spec.name!r} ran before; choose another name")
            live = await asyncio.to_thread(self.store.model_generation)
            arms: dict[str, dict[str, Any]] = {}
            by_dir = {live.model_dir: live.generation} if live is not None else {}
            staged: list[int] = []
            added: dict[int, dict[str, Any]] = {}  # generation -> what loading it cost the replicas
            try:
                for i, (arm, model_dir) in enumerate(zip(spec.arms, model_dirs)):
                    generation = by_dir.get(model_dir)
                    if generation is None:  # one generation per directory: arms share nothing mutable
                        generation = await self.feedback.stage_arm.remote(model_dir)
                        staged.append(generation)
                        by_dir[model_dir] = generation
                        try:
                            added[generation] = resident_cost(await self._preload_in_every_holder(generation))
                        except RequestError as exc:
                            raise RequestError(f"arms[{i}].model_dir", exc.message) from None
                    arms[arm.name] = {"generation": generation, "model_dir": model_dir,
                                      "model_files_mb": round(model_dir_mb(model_dir), 3),
                                      "shares_live_model": live is not None and generation == live.generation,
                                      **added.get(generation, {"added_resident_mb": 0.0, "replicas": 0})}
            except BaseException:
                await self.feedback.retire_models.remote(staged)
                raise
            record = new_record(spec, arms, live.model_dir if live is not None else None)
            await self.feedback.save_experiment.remote(record)
            self.experiment.forget()
        logger.info("experiment %s started: %s", spec.name,
                    ", ".join(f"{name}={arm['model_dir']}" for name, arm in arms.items()))
        return await asyncio.to_thread(report, self.store, record)

    async def _experiment_record(self, name: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.store.experiment, name)
        if record is None:
            raise NotFoundError("name", f"no experiment named {name!r}")
        return record

    @app.get("/experiments/{name}", response_model=ExperimentReport, responses=openapi_errors(404))
    async def experiment_report(self, name: str = Path(pattern=NAME_PATTERN)) -> Any:
        """The experiment's arms and readout: per arm impressions, CTR, conversion and position-weighted
        reward with 95% intervals, and each arm's difference to the control with its interval."""
        return await asyncio.to_thread(report, self.store, await self._experiment_record(name))

    async def _end_experiment(self, name: str, promoted_arm: str | None) -> dict[str, Any]:
        async with self._experiment_changes:
            record = await self._experiment_record(name)
            if record["status"] != "running":
                raise ConflictError("name", f"experiment {name!r} is {record['status']}, not running")
            live_generation = None
            if promoted_arm is not None:
                if promoted_arm not in record["arms"]:
                    raise RequestError("arm", f"experiment {name!r} has no arm {promoted_arm!r}; arms: "
                                              f"{', '.join(record['arms'])}")
                # The reload's switch: loaded everywhere (already, as an arm), then live at once.
                live_generation = record["arms"][promoted_arm]["generation"]
                await self._preload_in_every_holder(live_generation)
                await self.feedback.activate_model.remote(live_generation)
            else:
                live = await asyncio.to_thread(self.store.model_generation)
                live_generation = live.generation if live is not None else None
            # Requests already pinned to another arm finish on it: replicas unload it only later.
            await self.feedback.retire_models.remote(sorted(
                {arm["generation"] for arm in record["arms"].values()} - {live_generation}))
            record = {**record, "status": "promoted" if promoted_arm else "stopped", "promoted_arm": promoted_arm,
                      "ended_at": time.time()}
            await self.feedback.save_experiment.remote(record)
            self.experiment.forget()
        logger.info("experiment %s %s", name, f"promoted arm {promoted_arm}" if promoted_arm else "stopped")
        return await asyncio.to_thread(report, self.store, record)

    @app.post("/admin/experiments/{name}/promote", response_model=ExperimentReport,
              responses=openapi_errors(401, 403, 404, 409), dependencies=[Security(WRITE_ACCESS)])
    async def promote_arm(self, body: PromoteRequest, name: str = Path(pattern=NAME_PATTERN)) -> Any:
        """End the experiment: the arm's model becomes the only one served (the reload's switch,
        so no request fails); the readout stays available."""
        return await self._end_experiment(name, body.arm)

    @app.post("/admin/experiments/{name}/stop", response_model=ExperimentReport,
              responses=openapi_errors(401, 403, 404, 409), dependencies=[Security(WRITE_ACCESS)])
    async def stop_experiment(self, name: str = Path(pattern=NAME_PATTERN)) -> Any:
        """End the experiment without a winner: the live model serves everybody again."""
        return await self._end_experiment(name, None)

    async def preload(self, generation: int) -> Any:
        """Topology ingress: load ``generation`` into this replica's pipeline (see ``reload``)."""
        return await self.reads.preload(generation)

    @staticmethod
    async def _preload_everywhere(handle: DeploymentHandle, generation: int) -> list[str]:
        broadcast = getattr(handle, "broadcast", None)
        if broadcast is None:  # older Ray: one replica now, the others on first use
            return [await handle.preload.remote(generation)]
        return await broadcast("preload", generation).results_async(timeout_s=600)

    @app.get("/healthz", response_model=HealthResponse, responses=READ)
    async def healthz(self) -> Any:
        return {"status": "ok", **await self.reads.status()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/demo", response_class=HTMLResponse, include_in_schema=False)
    async def demo_page(self) -> HTMLResponse:
        return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))
