"""How errors become HTTP answers: one JSON shape (``message`` + ``detail``) for every error.

A request the server cannot serve because of its content answers 4xx with a ``message`` naming
the field (``k: Input should be less than or equal to 1000``) and FastAPI's ``detail`` list;
only a bug answers 500, and it is logged with its traceback. Overload (a full queue) and a
replica that died under a request answer 503 with ``Retry-After``: the request can be re-sent
(feedback with the same ``event_id`` is stored once).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrec.serving.http.security import replica_guard_policy
from rayrec.serving.schemas import ErrorResponse
from rayrec.serving.stages.errors import RequestError

logger = logging.getLogger("ray.serve")

#: What each error status means, for the OpenAPI ``responses`` of the routes.
STATUS_TEXT = {
    401: "No API key sent (writes and admin, when keys are configured).",
    403: "The API key is not valid, or the request is not allowed (e.g. a model outside model_roots).",
    404: "The item or path does not exist.",
    409: "The request clashes with the current state (e.g. an experiment is running already).",
    413: "The request body is too large.",
    422: "The request is invalid; `message` names the field.",
    503: "Overloaded or a replica restarting: retry after `Retry-After` seconds.",
}


def openapi_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error answers a route can give (all share ErrorResponse)."""
    return {code: {"model": ErrorResponse, "description": STATUS_TEXT[code]} for code in sorted({422, 413, 503, *codes})}


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


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
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


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    # Also catches the copies Ray re-raises from a stage (they subclass RequestError).
    return ErrorJSONResponse(
        status_code=exc.status_code,
        content={
            "message": f"{exc.field}: {exc.message}",
            "detail": [{"loc": exc.field.split("."), "msg": exc.message, "type": type(exc).__name__}],
        },
    )


def unavailable(message: str) -> JSONResponse:
    policy = replica_guard_policy()
    retry_after = policy.retry_after_s if policy is not None else 1.0
    return ErrorJSONResponse(
        status_code=503,
        content={"message": message, "detail": [{"loc": [], "msg": message, "type": "unavailable"}]},
        headers={"Retry-After": str(max(0, math.ceil(retry_after)))},
    )


async def backpressure(request: Request, exc: BackPressureError) -> JSONResponse:
    # An inner stage's queue is full (the ingress's own is answered by the Serve proxy).
    return unavailable("overloaded: too many requests are queued; retry after the Retry-After delay")


async def replica_lost(request: Request, exc: Exception) -> JSONResponse:
    # A stage replica died while serving this request (Serve restarts it). Writes are
    # idempotent by event_id, so re-sending is safe.
    logger.warning("a stage replica failed during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return unavailable("a serving replica failed during the request; retry after the Retry-After delay")


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return ErrorJSONResponse(status_code=500, content={"message": "internal error; see the server log", "detail": []})


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(BackPressureError, backpressure)
    app.add_exception_handler(RayActorError, replica_lost)
    app.add_exception_handler(DeploymentUnavailableError, replica_lost)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
