"""The HTTP ingress: FastAPI routes (OpenAPI at ``/openapi.json``) over the stage handles.

Error policy: a request the server cannot serve because of its content answers 4xx with a
``message`` naming the field (``k: Input should be less than or equal to 1000``) and
FastAPI's ``detail`` list; only a bug answers 500, and it is logged with its traceback.
Overload (a full queue) and a replica that died under a request answer 503 with
``Retry-After``: the request can be re-sent (feedback with the same ``event_id`` is stored once).

Before any route runs, :class:`~rayrec.serving.http.security.RequestGuard` checks API keys on the
write and admin routes (those declared with ``WRITE_ACCESS``), caps the body size, and times
the request for the metrics and the request log.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real parameter types
# of the class-based routes that serve.ingress wraps.
import asyncio
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

from fastapi import Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrec import __version__
from rayrec.components import FeedbackEvent
from rayrec.serving.config import AppArgs
from rayrec.serving.graph.observability import RequestLog, serving_metrics
from rayrec.serving.stages.errors import ForbiddenError, RequestError, StageError
from rayrec.serving.schemas import (
    MAX_ID_LENGTH,
    MAX_K,
    EraseResponse,
    ErrorResponse,
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
from rayrec.serving.http.security import WRITE_ACCESS, GuardPolicy, RequestGuard, check_model_root, load_api_keys

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


def _guard_policy() -> GuardPolicy | None:
    """The policy of this ingress replica (built in ``Ingress.__init__``)."""
    try:
        return getattr(serve.get_replica_context().servable_object, "guard_policy", None)
    except Exception:  # not inside a replica (yet)
        return None


app.add_middleware(RequestGuard, policy=_guard_policy)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error answers a route can give (all share ErrorResponse)."""
    text = {
        401: "No API key sent (writes and admin, when keys are configured).",
        403: "The API key is not valid, or the request is not allowed (e.g. a model outside model_roots).",
        404: "The item or path does not exist.",
        413: "The request body is too large.",
        422: "The request is invalid; `message` names the field.",
        503: "Overloaded or a replica restarting: retry after `Retry-After` seconds.",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in sorted({422, 413, 503, *codes})}


READ = _errors()
WRITE = _errors(401, 403)


class ErrorJSONResponse(JSONResponse):
    """Error bodies as ASCII JSON: they may quote what the client sent, even unpaired surrogates."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":  # loc is ("body", character position)
            parts.append(f"body: malformed JSON ({e.get('msg')}) at character {list(e.get('loc', ('', '?')))[-1]}")
        else:
            parts.append(f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}")
    message = "; ".join(parts)
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return ErrorJSONResponse(status_code=422, content={"message": message, "detail": detail})


@app.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    # Also catches the copies Ray re-raises from a stage (they subclass RequestError).
    return ErrorJSONResponse(
        status_code=exc.status_code,
        content={
            "message": f"{exc.field}: {exc.message}",
            "detail": [{"loc": exc.field.split("."), "msg": exc.message, "type": type(exc).__name__}],
        },
    )


def _unavailable(message: str) -> JSONResponse:
    retry_after = 1.0
    policy = _guard_policy()
    if policy is not None:
        retry_after = policy.retry_after_s
    return ErrorJSONResponse(
        status_code=503,
        content={"message": message, "detail": [{"loc": [], "msg": message, "type": "unavailable"}]},
        headers={"Retry-After": str(max(0, math.ceil(retry_after)))},
    )


@app.exception_handler(BackPressureError)
async def _backpressure(request: Request, exc: BackPressureError) -> JSONResponse:
    # An inner stage's queue is full (the ingress's own is answered by the Serve proxy).
    return _unavailable("overloaded: too many requests are queued; retry after the Retry-After delay")


@app.exception_handler(RayActorError)
@app.exception_handler(DeploymentUnavailableError)
async def _replica_lost(request: Request, exc: Exception) -> JSONResponse:
    # A stage replica died while serving this request (Serve restarts it). Writes are
    # idempotent by event_id, so re-sending is safe.
    logger.warning("a stage replica failed during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return _unavailable("a serving replica failed during the request; retry after the Retry-After delay")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths (404) and methods (405) get the same body shape as every other error.
    message = str(exc.detail)
    if exc.status_code == 400:  # FastAPI: a body that is not even text (undecodable bytes)
        message = f"cannot parse the body as JSON ({message})"
        return ErrorJSONResponse(
            status_code=422, content={"message": f"body: {message}", "detail": [{"loc": ["body"], "msg": message, "type": "json_invalid"}]}
        )
    return ErrorJSONResponse(
        status_code=exc.status_code,
        content={"message": f"{request.url.path}: {message}", "detail": [{"loc": ["path"], "msg": message, "type": "http"}]},
        headers=getattr(exc, "headers", None),
    )


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return ErrorJSONResponse(status_code=500, content={"message": "internal error; see the server log", "detail": []})


class InProcessHandle:
    """A stage object living in this replica, called with the DeploymentHandle convention
    (``await handle.method.remote(...)``), so the routes do not care where the stage runs.
    It has no ``broadcast``: a hot reload broadcasts ``preload`` to the Ingress deployment."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return _InProcessMethod(getattr(self.target, name))


class _InProcessMethod:
    def __init__(self, method: Any) -> None:
        self.method = method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.method(*args, **kwargs)  # a coroutine; the route awaits it


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle | None,
        encoder: DeploymentHandle | None,
        scorer: DeploymentHandle | None,
        feedback: DeploymentHandle,
        args: AppArgs,
    ) -> None:
        # Split topology: three read stages. Fused: ``scorer`` is the RecommendPipeline, which
        # prepares and encodes too, and the other two are None. Ingress: all three are None and
        # this replica runs its own RecommendPipeline, called like a handle.
        if args.topology == "ingress":
            from rayrec.serving.graph.deployments import RecommendPipeline

            scorer = InProcessHandle(RecommendPipeline.func_or_class(args))
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.scorer = scorer
        self.fused = preprocessor is None
        self.feedback = feedback
        self.args = args
        self.metrics = serving_metrics()
        self.request_log = RequestLog(args.request_log) if args.request_log else None
        # Keys are read here, in the replica, and kept only as digests; never logged.
        keys = load_api_keys(args.api_keys_file, env_var=args.api_keys_env)
        self.guard_policy = GuardPolicy(
            keys=keys, max_body_bytes=args.max_body_bytes, retry_after_s=args.retry_after_s, on_response=self._on_response
        )
        logger.info("ingress ready: %s; writes %s", keys, "need an API key" if keys else "are open (no API keys configured)")

    def _on_response(self, method: str, route: str, status: int, seconds: float, body_bytes: int) -> None:
        """Called by the RequestGuard after every request: metrics, then the request log (enqueue only)."""
        self.metrics.record_request(method, route, status, seconds)
        if self.request_log is not None:
            self.request_log.log(method=method, route=route, status=status, ms=round(seconds * 1000, 3), bytes_in=body_bytes)

    def check_health(self) -> None:
        if isinstance(self.scorer, InProcessHandle):
            self.scorer.target.check_health()  # the state store of the in-process pipeline

    def __del__(self) -> None:
        if getattr(self, "request_log", None) is not None:
            self.request_log.close()

    # exclude_unset: an item carries title/text/categories only when ``include`` asked for them.
    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_unset=True, responses=READ)
    async def recommend(self, request: RecommendRequest) -> Any:
        if request.k > self.args.max_k:
            raise RequestError("k", f"at most {self.args.max_k}")
        if self.fused:
            return StageError.raise_for(await self.scorer.recommend_for.remote(request))
        prepared, vector, attributions = await self._prepare_and_encode(request)
        return StageError.raise_for(await self.scorer.recommend.remote(prepared, vector, attributions))

    async def _prepare_and_encode(self, request: RecommendRequest):
        """Split topology: the user's state from the preprocessor, then their vector when they
        have history -> (prepared, user vector or None, attributions or None)."""
        prepared = await self.preprocessor.prepare.remote(request)
        vector = attributions = None
        if prepared.personalized:
            vector, attributions = await self.encoder.encode.remote(prepared.generation, prepared.history_indices)
        return prepared, vector, attributions

    @app.post("/search", response_model=SearchResponse, response_model_exclude_unset=True, responses=_errors(404))
    async def search(self, request: SearchRequest) -> Any:
        """Items whose content matches ``query``; with ``user_id``, blended with that user's taste.

        404 when this server has no text model for search (see ``search`` in the app arguments).
        """
        if request.k > self.args.max_k:
            raise RequestError("k", f"at most {self.args.max_k}")
        if self.fused:
            return StageError.raise_for(await self.scorer.search_for.remote(request))
        prepared = vector = attributions = None
        if request.user_id is not None:
            prepared, vector, attributions = await self._prepare_and_encode(request.as_recommend_request())
        return StageError.raise_for(await self.scorer.search.remote(request, prepared, vector, attributions))

    @app.post("/feedback", response_model=FeedbackResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def feedback(self, body: FeedbackRequest) -> Any:
        received_at = time.time()
        events = [FeedbackEvent(**event.model_dump()) for event in body.events]
        return StageError.raise_for(await self.feedback.ingest.remote(events, received_at))

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse, responses=_errors(404))
    async def similar_items(
        self, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH), k: int = Query(10, ge=1, le=MAX_K)
    ) -> Any:
        if k > self.args.max_k:
            raise RequestError("k", f"at most {self.args.max_k}")
        return StageError.raise_for(await self.scorer.similar.remote(item_id, k))

    @app.get("/items/{item_id}", response_model=ItemOut, responses=_errors(404))
    async def get_item(self, item_id: str = Path(min_length=1, max_length=512)) -> Any:
        return StageError.raise_for(await self.scorer.item.remote(item_id))

    @app.put("/items/{item_id}", response_model=ItemChangeResponse, responses=WRITE, dependencies=[Security(WRITE_ACCESS)])
    async def put_item(self, item: ItemIn, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH)) -> Any:
        return StageError.raise_for(await self.scorer.put_item.remote(item_id, item))

    @app.delete(
        "/items/{item_id}", response_model=ItemChangeResponse, responses=_errors(401, 403, 404),
        dependencies=[Security(WRITE_ACCESS)],
    )
    async def delete_item(self, item_id: str = Path(min_length=1, max_length=MAX_ID_LENGTH)) -> Any:
        return StageError.raise_for(await self.scorer.delete_item.remote(item_id))

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
            model_dir = check_model_root(body.model_dir, self.args.model_roots)
        except PermissionError as exc:
            raise ForbiddenError("model_dir", str(exc)) from None
        except (ValueError, OSError) as exc:  # e.g. an embedded NUL byte
            raise RequestError("model_dir", f"not a usable path ({exc})") from None
        generation = await self.feedback.stage_model.remote(model_dir)
        holders = [handle for handle in (self.preprocessor, self.encoder, self.scorer) if handle is not None]
        if isinstance(self.scorer, InProcessHandle):  # topology ingress: every ingress replica holds one
            context = serve.get_replica_context()
            holders = [serve.get_deployment_handle(context.deployment, context.app_name)]
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
        return await self.scorer.preload.remote(generation)

    @staticmethod
    async def _preload_everywhere(handle: DeploymentHandle, generation: int) -> list[str]:
        broadcast = getattr(handle, "broadcast", None)
        if broadcast is None:  # older Ray: one replica now, the others on first use
            return [await handle.preload.remote(generation)]
        return await broadcast("preload", generation).results_async(timeout_s=600)

    @app.get("/healthz", response_model=HealthResponse, responses=READ)
    async def healthz(self) -> Any:
        return {"status": "ok", **await self.scorer.status.remote()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/demo", response_class=HTMLResponse, include_in_schema=False)
    async def demo_page(self) -> HTMLResponse:
        return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))
