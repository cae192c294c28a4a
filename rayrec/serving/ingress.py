"""The HTTP ingress: FastAPI routes (OpenAPI at ``/openapi.json``) over the stage handles.

Error policy: a request the server cannot serve because of its content answers 4xx with a
``message`` naming the field (``k: Input should be less than or equal to 1000``) and
FastAPI's ``detail`` list; only a bug answers 500, and it is logged with its traceback.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real parameter types
# of the class-based routes that serve.ingress wraps.
import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec import __version__
from rayrec.components import FeedbackEvent
from rayrec.serving.config import AppArgs
from rayrec.serving.errors import RequestError, StageError
from rayrec.serving.schemas import (
    MAX_K,
    EraseResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ItemChangeResponse,
    ItemIn,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SimilarItemsResponse,
)

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="rayrec",
    version=__version__,
    description="Real-time recommendations from a two-tower model; feedback changes the next answer.",
)


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
    return JSONResponse(status_code=422, content={"message": message, "detail": detail})


@app.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    # Also catches the copies Ray re-raises from a stage (they subclass RequestError).
    return JSONResponse(
        status_code=exc.status_code,
        content={"message": f"{exc.field}: {exc.message}", "detail": [{"loc": exc.field.split("."), "msg": exc.message}]},
    )


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"message": "internal error; see the server log", "detail": []})


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle,
        encoder: DeploymentHandle,
        scorer: DeploymentHandle,
        feedback: DeploymentHandle,
        args: AppArgs,
    ) -> None:
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.scorer = scorer
        self.feedback = feedback
        self.args = args

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> Any:
        if request.k > self.args.max_k:
            raise RequestError("k", f"at most {self.args.max_k}")
        prepared = await self.preprocessor.prepare.remote(request)
        vector = attributions = None
        if prepared.personalized:
            vector, attributions = await self.encoder.encode.remote(prepared.generation, prepared.history_indices)
        return StageError.raise_for(await self.scorer.recommend.remote(prepared, vector, attributions))

    @app.post("/feedback", response_model=FeedbackResponse)
    async def feedback(self, body: FeedbackRequest) -> Any:
        events = [FeedbackEvent(**event.model_dump()) for event in body.events]
        return StageError.raise_for(await self.feedback.ingest.remote(events))

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse)
    async def similar_items(self, item_id: str = Path(min_length=1), k: int = Query(10, ge=1, le=MAX_K)) -> Any:
        return StageError.raise_for(await self.scorer.similar.remote(item_id, k))

    @app.put("/items/{item_id}", response_model=ItemChangeResponse)
    async def put_item(self, item: ItemIn, item_id: str = Path(min_length=1, max_length=512)) -> Any:
        return StageError.raise_for(await self.scorer.put_item.remote(item_id, item))

    @app.delete("/items/{item_id}", response_model=ItemChangeResponse)
    async def delete_item(self, item_id: str = Path(min_length=1)) -> Any:
        return StageError.raise_for(await self.scorer.delete_item.remote(item_id))

    @app.delete("/users/{user_id}", response_model=EraseResponse)
    async def erase_user(self, user_id: str = Path(min_length=1)) -> Any:
        return StageError.raise_for(await self.feedback.erase_user.remote(user_id))

    @app.post("/admin/reload", response_model=ReloadResponse)
    async def reload(self, body: ReloadRequest) -> Any:
        """Load the model in every replica of every stage, then switch all of them at once.

        Requests are pinned to a generation by the preprocessor, so a request that started on
        the old model finishes on it; replicas that missed the broadcast (or start later)
        load the new generation on first use.
        """
        generation = await self.feedback.stage_model.remote(body.model_dir)
        try:
            groups = await asyncio.gather(
                *(self._preload_everywhere(handle, generation) for handle in (self.preprocessor, self.encoder, self.scorer))
            )
            versions = [StageError.raise_for(version) for group in groups for version in group]
        except BaseException:
            await self.feedback.fail_model.remote(generation)
            raise
        await self.feedback.activate_model.remote(generation)
        version = versions[0] if versions else ""
        logger.info("model generation %d (%s) from %s is live", generation, version, body.model_dir)
        return {"model_version": version, "generation": generation, "model_dir": body.model_dir}

    @staticmethod
    async def _preload_everywhere(handle: DeploymentHandle, generation: int) -> list[str]:
        broadcast = getattr(handle, "broadcast", None)
        if broadcast is None:  # older Ray: one replica now, the others on first use
            return [await handle.preload.remote(generation)]
        return await broadcast("preload", generation).results_async(timeout_s=600)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> Any:
        return {"status": "ok", "model_version": await self.scorer.model_version.remote()}
