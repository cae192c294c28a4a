"""What the HTTP front door refuses before any stage runs: missing or wrong API keys, bodies
that are too large, model directories outside the configured roots.

* **API keys** (bearer tokens) guard every write and admin route; reads stay open. Keys come
  from an environment variable (``RAYREC_API_KEYS``, comma-separated) and/or a file (one key
  per line, ``#`` comments), are compared in constant time and are never logged or shown.
* **Body size**: a request body larger than ``max_body_bytes`` is refused with 413 before it is
  parsed (by ``Content-Length``, or while streaming a chunked body).
* **Model roots**: ``/admin/reload`` loads model directories only from inside the configured
  roots (symlinks resolved), so a caller cannot make the server read arbitrary paths.

:class:`RequestGuard` is the ASGI middleware that applies the first two to every request and
also times it for :mod:`rayrec.serving.graph.observability`; the checks themselves are plain
functions tested without Ray.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fastapi.security import HTTPBearer

from rayrec.errors import ConfigError

#: The environment variable read for API keys (comma-separated) unless configured otherwise.
API_KEYS_ENV = "RAYREC_API_KEYS"

class WriteAccess(HTTPBearer):
    """The bearer scheme of protected routes (a class of its own so the guard can find it
    after Serve has copied the app)."""


#: Declared on every write and admin route: documents the bearer scheme in ``/openapi.json``
#: and marks the route as protected for :class:`RequestGuard`. It never rejects by itself
#: (``auto_error=False``): the guard does, before the body is even read.
WRITE_ACCESS = WriteAccess(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer <key>`. Required for writes and admin when keys are configured.",
)

#: Methods that never change anything; every other method is a write unless listed in
#: ``READ_ROUTES`` (a POST that only reads, such as ``/recommend``).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiKeys:
    """A set of API keys, checked in constant time. ``repr`` and ``str`` never show a key."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        # Compare fixed-length digests: compare_digest on raw keys would leak their lengths.
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in dict.fromkeys(keys) if key)

    def __len__(self) -> int:
        return len(self._digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"

    __str__ = __repr__

    def matches(self, token: str) -> bool:
        """True if ``token`` is one of the keys; the time taken does not depend on which or how close."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for candidate in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(digest, candidate)
        return found


def parse_key_file(text: str) -> list[str]:
    """Keys from a key file: one per line; blank lines and ``#`` comments are ignored."""
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    return keys


def load_api_keys(keys_file: str | None = None, env_var: str | None = API_KEYS_ENV,
                  environ: dict[str, str] | None = None) -> ApiKeys:
    """The keys from ``env_var`` (comma-separated) and ``keys_file``; empty means no keys required.

    A configured file that is missing, unreadable or holds no key is an error: silently
    serving without keys would open every write route.
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if env_var and environ.get(env_var):
        keys += [key.strip() for key in environ[env_var].split(",") if key.strip()]
    if keys_file:
        path = Path(keys_file).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"security.api_keys_file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
        file_keys = parse_key_file(text)
        if not file_keys:
            raise ConfigError(f"security.api_keys_file {str(path)!r}: no key in it (one key per line; '#' starts a comment)")
        keys += file_keys
    return ApiKeys(keys)


class AuthError(Exception):
    """A protected route was called without a valid key: 401 (missing) or 403 (wrong)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"message": f"authorization: {self.message}", "detail": [{"loc": ["header", "authorization"],
                                                                          "msg": self.message, "type": "auth"}]}


def check_authorization(keys: ApiKeys, authorization: str | None) -> None:
    """Raise :class:`AuthError` unless ``authorization`` is ``Bearer <one of keys>``.

    The error messages never repeat what the client sent.
    """
    if not keys:
        return
    if not authorization:
        raise AuthError(401, "an API key is required for this route; send the header 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "malformed Authorization header; expected 'Authorization: Bearer <key>'")
    if not keys.matches(token.strip()):
        raise AuthError(403, "the API key is not valid")


# -- model roots --------------------------------------------------------------------------------
def default_model_roots(model_dir: str) -> list[str]:
    """The parent directory of the initial model: reloads of its siblings are allowed."""
    return [str(Path(model_dir).expanduser().resolve().parent)]


def resolve_model_roots(roots: Sequence[str]) -> list[str]:
    return [str(Path(root).expanduser().resolve()) for root in roots]


def check_model_root(model_dir: str, roots: Sequence[str]) -> str:
    """``model_dir`` resolved (symlinks and ``..`` followed) if it lies inside one of ``roots``.

    Raises :class:`PermissionError` with a message naming the path and the roots otherwise.
    An empty ``roots`` allows nothing.
    """
    resolved = Path(model_dir).expanduser().resolve()
    for root in roots:
        if resolved == Path(root) or resolved.is_relative_to(root):
            return str(resolved)
    shown = ", ".join(roots) or "(none)"
    raise PermissionError(
        f"{model_dir!r} is outside the allowed model roots ({shown}); put the model under one of them "
        "or add its parent directory to security.model_roots"
    )


# -- the middleware -------------------------------------------------------------------------------
@dataclass
class GuardPolicy:
    """What :class:`RequestGuard` enforces, built by the ingress replica from its AppArgs."""

    keys: ApiKeys = field(default_factory=ApiKeys)
    max_body_bytes: int = 1 << 20
    retry_after_s: float = 1.0
    #: Called once per request: (method, route template, status, seconds, request body bytes).
    on_response: Callable[[str, str, int, float, int], None] | None = None


def replica_guard_policy() -> GuardPolicy | None:
    """The policy of the ingress replica this runs in (set in ``Ingress.__init__``), or None."""
    try:
        from ray import serve

        return getattr(serve.get_replica_context().servable_object, "guard_policy", None)
    except Exception:  # not inside a replica (yet)
        return None


class BodyTooLarge(Exception):
    pass


def _json_response(status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()):
    payload = json.dumps(body).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    }
    return start, {"type": "http.response.body", "body": payload}


class RequestGuard:
    """ASGI middleware: API keys on protected routes, the body size limit, timing and status.

    ``policy`` is a callable returning the :class:`GuardPolicy` (looked up per request: the
    ingress builds it in its constructor, after this middleware was declared). A route is
    protected when it was declared with the :data:`WRITE_ACCESS` dependency, so the OpenAPI
    schema and the enforcement cannot disagree.
    """

    def __init__(self, app, policy: Callable[[], GuardPolicy | None]) -> None:
        self.app = app
        self.policy = policy
        self._routes: dict[int, list[tuple[str, Any, bool]]] = {}

    def _leaf_routes(self, app) -> list[tuple[str, Any, bool]]:
        """(prefix, route, protected) for every leaf route, included routers walked (FastAPI
        keeps ``include_router`` routes nested, and Serve re-mounts class-based routes so)."""
        cached = self._routes.get(id(app))
        if cached is not None:
            return cached
        leaves: list[tuple[str, Any, bool]] = []

        def walk(router, prefix: str) -> None:
            for route in getattr(router, "routes", ()):
                original = getattr(route, "original_router", None)
                if original is not None:  # FastAPI >= 0.137: an included router, resolved lazily
                    context = getattr(route, "include_context", None)
                    walk(original, prefix + (getattr(context, "prefix", "") or ""))
                    continue
                dependencies = getattr(route, "dependencies", ()) or ()
                protected = any(isinstance(getattr(d, "dependency", None), WriteAccess) for d in dependencies)
                leaves.append((prefix, route, protected))

        walk(app, "")
        self._routes[id(app)] = leaves
        return leaves

    def _route(self, scope) -> tuple[str, bool]:
        """The matched route's path template and whether it is protected (writes, admin).

        An unknown path counts as protected for any method but GET, HEAD and OPTIONS, so a
        client without a key learns nothing about which write routes exist.
        """
        from starlette.routing import Match

        path = scope.get("path", "")
        for prefix, route, protected in self._leaf_routes(scope.get("app")):
            if prefix:
                if not path.startswith(prefix):
                    continue
                match, _ = route.matches({**scope, "path": path[len(prefix):]})
            else:
                match, _ = route.matches(scope)
            if match == Match.FULL:
                return prefix + getattr(route, "path", "other"), protected
        return "unmatched", scope.get("method", "GET") not in SAFE_METHODS

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy() or GuardPolicy()
        started = time.perf_counter()
        method = scope.get("method", "GET")
        route, protected = self._route(scope)
        status = {"code": 500, "sent": False}
        received = {"bytes": 0}

        async def reply(code: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
            start, content = _json_response(code, body, headers)
            status["code"], status["sent"] = code, True
            await send(start)
            await send(content)

        try:
            if protected:
                headers = dict(scope.get("headers") or [])
                authorization = headers.get(b"authorization")
                try:
                    check_authorization(policy.keys, authorization.decode("latin-1") if authorization else None)
                except AuthError as exc:
                    extra = [(b"www-authenticate", b'Bearer realm="rayrec"')] if exc.status_code == 401 else []
                    await reply(exc.status_code, exc.body(), extra)
                    return
            limit = policy.max_body_bytes
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None:
                try:
                    too_large = int(declared) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await reply(413, _too_large(limit))
                    return

            async def limited_receive():
                message = await receive()
                if message.get("type") == "http.request":
                    received["bytes"] += len(message.get("body", b""))
                    if received["bytes"] > limit:
                        raise BodyTooLarge()
                return message

            async def tracking_send(message):
                if message["type"] == "http.response.start":
                    status["code"], status["sent"] = message["status"], True
                await send(message)

            try:
                await self.app(scope, limited_receive, tracking_send)
            except BodyTooLarge:
                if not status["sent"]:
                    await reply(413, _too_large(limit))
        finally:
            if policy.on_response is not None:
                try:
                    policy.on_response(method, route, status["code"], time.perf_counter() - started, received["bytes"])
                except Exception:  # observability must never fail a request
                    pass


def _too_large(limit: int) -> dict[str, Any]:
    message = f"the request body exceeds {limit} bytes; send smaller batches"
    return {"message": f"body: {message}", "detail": [{"loc": ["body"], "msg": message, "type": "too_large"}]}

