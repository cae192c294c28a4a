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
from typing import Any

from fastapi import Path, Query, Security
from fastapi.responses import HTMLResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec import __version__
from rayrec.components import FeedbackEvent
from rayrec.serving.config import AppArgs
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
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ItemChangeResponse,
    ItemIn,
    ItemOut,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SearchRequest,
    SearchResponse,
    SimilarItemsResponse,
)
from rayrec.serving.stages.errors import ForbiddenError, RequestError, StageError
from rayrec.serving.stages.scoring import check_scorer_options

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


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, reads: ReadPath, feedback: DeploymentHandle, args: AppArgs) -> None:
        # ``reads`` is the topology: the read stages' handles, or (topology ingress) a
        # pipeline this replica builds for itself in start().
        self.reads = reads.start(args)
        self.feedback = feedback
        self.args = args
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
        if request.scorer_options:
            check_scorer_options(self.args.scorers, request.scorer_options)
        return StageError.raise_for(await self.reads.recommend(request))

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
        if not os.path.isabs(body.model_dir):
            raise RequestError("model_dir", "must be an absolute path (replicas may run in another directory)")
        try:
            model_dir = check_model_root(body.model_dir, self.args.security.model_roots)
        except PermissionError as exc:
            raise ForbiddenError("model_dir", str(exc)) from None
        except (ValueError, OSError) as exc:  # e.g. an embedded NUL byte
            raise RequestError("model_dir", f"not a usable path ({exc})") from None
        generation = await self.feedback.stage_model.remote(model_dir)
        holders = self.reads.model_holders()
        try:
            groups = await asyncio.gather(*(self._preload_everywhere(handle, generation) for handle in holders))
            versions = [StageError.raise_for(version) for group in groups for version in group]
        except BaseException:
            await self.feedback.fail_model.remote(generation)
            raise
        await self.feedback.activate_model.remote(generation)
        version = versions[0] if versions else ""
        logger.info("model generation %d (%s) from %s is live", generation, version, model_dir)
        return {"model_version": version, "generation": generation, "model_dir": model_dir}

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
