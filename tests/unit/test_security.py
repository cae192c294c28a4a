"""API keys, body limits, model roots and overload answers, without Ray.

The guard middleware is exercised on a small FastAPI app built the way the ingress builds
its own (routes declared with ``WRITE_ACCESS`` are the protected ones); the ingress's 503
handlers are called directly.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from fastapi import FastAPI, Request, Security
from fastapi.testclient import TestClient

from rayrec.errors import ConfigError
from rayrec.serving.http.security import (
    WRITE_ACCESS,
    ApiKeys,
    AuthError,
    GuardPolicy,
    RequestGuard,
    check_authorization,
    check_model_root,
    load_api_keys,
)

KEY = "k-3f9a7c1e5b2d4f6a8c0e"


# -- keys ------------------------------------------------------------------------------------------
def test_keys_match_exactly_and_never_show_themselves():
    keys = ApiKeys([KEY, "second-key", KEY, ""])
    assert len(keys) == 2
    assert keys.matches(KEY) and keys.matches("second-key")
    assert not keys.matches(KEY[:-1]) and not keys.matches(KEY + "x") and not keys.matches("")
    for text in (repr(keys), str(keys), f"{keys}"):
        assert KEY not in text and "second-key" not in text
    assert not ApiKeys() and not ApiKeys([""])


def test_keys_come_from_the_environment_and_a_file(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# operators\nfile-key-1\n\n  file-key-2  # rotated 2024-06\n")
    keys = load_api_keys(str(key_file), env_var="RAYREC_API_KEYS", environ={"RAYREC_API_KEYS": " env-a, env-b ,"})
    assert all(keys.matches(k) for k in ("file-key-1", "file-key-2", "env-a", "env-b"))
    assert len(keys) == 4
    assert not load_api_keys(None, environ={})  # nothing configured: writes stay open
    assert len(load_api_keys(None, env_var=None, environ={"RAYREC_API_KEYS": "x"})) == 0


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_a_configured_key_file_without_keys_is_an_error(tmp_path, content):
    key_file = tmp_path / "keys.txt"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ConfigError, match=r"api_keys_file .*keys.txt"):
        load_api_keys(str(key_file), environ={})


def test_authorization_header_checks():
    keys = ApiKeys([KEY])
    check_authorization(keys, f"Bearer {KEY}")
    check_authorization(keys, f"bearer   {KEY} ")
    check_authorization(ApiKeys(), None)  # no keys configured: open
    for header, status in [(None, 401), ("", 401), (KEY, 401), ("Basic abc", 401), ("Bearer ", 401),
                           ("Bearer wrong-key", 403), (f"Bearer {KEY}0", 403)]:
        with pytest.raises(AuthError) as info:
            check_authorization(keys, header)
        assert info.value.status_code == status, header
        assert "wrong-key" not in info.value.message and KEY not in info.value.message


# -- model roots ---------------------------------------------------------------------------------
def test_model_roots_allow_only_directories_inside_them(tmp_path):
    root = tmp_path / "models"
    (root / "v2").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    roots = [str(root.resolve())]
    assert check_model_root(str(root / "v2"), roots) == str((root / "v2").resolve())
    assert check_model_root(str(root / "not-yet-there"), roots).endswith("not-yet-there")
    for bad in [str(outside), str(root / ".." / "elsewhere"), str(root / "sneaky"), "/etc", str(tmp_path / "models2")]:
        with pytest.raises(PermissionError, match="outside the allowed model roots") as info:
            check_model_root(bad, roots)
        assert str(root.resolve()) in str(info.value)
    with pytest.raises(PermissionError):
        check_model_root(str(root / "v2"), [])


def test_app_args_default_the_model_roots_to_the_initial_models_parent(tmp_path):
    from rayrec.serving.app import resolve_args
    from rayrec.serving.config import AppArgs
    from rayrec.testing import write_toy_model

    model = write_toy_model(tmp_path / "models" / "m1", num_items=20, dim=4)
    args = resolve_args(AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/s.db"))
    assert args.security.model_roots == [str((tmp_path / "models").resolve())]
    explicit = resolve_args(AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/s.db",
                                    security={"model_roots": [str(tmp_path)]}))
    assert explicit.security.model_roots == [str(tmp_path.resolve())]
    with pytest.raises(ConfigError, match="api_keys_file"):
        resolve_args(AppArgs(model_dir=str(model), state=f"sqlite:///{tmp_path}/s.db",
                             security={"api_keys_file": str(tmp_path / "no-keys.txt")}))


def test_deployments_get_a_queue_limit_and_a_503_with_retry_after():
    from rayrec.serving.config import AppArgs
    from rayrec.serving.graph.builder import deployment_options

    args = AppArgs(model_dir="/m", limits={"retry_after_s": 2.5}, stages={"scorer": {"max_queued_requests": 7}})
    options = deployment_options("scorer", args)
    assert options["max_queued_requests"] == 7
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.5}
    assert deployment_options("ingress", args)["max_queued_requests"] == 256


# -- the guard middleware -------------------------------------------------------------------------
def guarded_app(policy: GuardPolicy) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGuard, policy=lambda: policy)

    @app.post("/write", dependencies=[Security(WRITE_ACCESS)])
    async def write(request: Request) -> dict:
        body = await request.body()
        return {"bytes": len(body)}

    @app.post("/read")
    async def read(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict:
        return {"item_id": item_id}

    return app


@pytest.fixture
def seen():
    return []


@pytest.fixture
def client(seen):
    policy = GuardPolicy(keys=ApiKeys([KEY]), max_body_bytes=2048,
                         on_response=lambda *fields: seen.append(fields))
    with TestClient(guarded_app(policy)) as c:
        yield c


def test_writes_need_a_key_reads_do_not(client, seen):
    missing = client.post("/write", json={})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["message"].startswith("authorization: an API key is required")
    wrong = client.post("/write", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["message"] == "authorization: the API key is not valid"
    assert client.post("/write", json={}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/read", json={}).status_code == 200
    assert client.get("/items/x").status_code == 200
    # the callback sees every request with the route template, never the raw path
    assert [(m, r, s) for m, r, s, _, _ in seen] == [
        ("POST", "/write", 401), ("POST", "/write", 403), ("POST", "/write", 200), ("POST", "/read", 200),
        ("GET", "/items/{item_id}", 200)]
    assert all(KEY not in json.dumps(fields) for fields in seen)


def test_unknown_write_paths_are_protected_too(client):
    assert client.post("/no-such-route", json={}).status_code == 401
    assert client.delete("/no-such-route").status_code == 401
    assert client.get("/no-such-route").status_code == 404


def test_without_keys_everything_is_open(seen):
    with TestClient(guarded_app(GuardPolicy())) as c:
        assert c.post("/write", json={}).status_code == 200


def test_bodies_over_the_limit_are_refused_before_the_route_runs(client):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/read", content=b"x" * 2048).json() == {"bytes": 2048}
    declared = client.post("/read", content=b"x" * 2049)
    assert declared.status_code == 413 and "exceeds 2048 bytes" in declared.json()["message"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b"y" * 512

    streamed = client.post("/write", content=chunks(), headers=auth)
    assert streamed.status_code == 413
    assert client.post("/write", content=b"z" * 10, headers=auth).status_code == 200
    # the key check comes first: an unauthenticated big body is refused without reading it
    assert client.post("/write", content=b"x" * 10_000).status_code == 401


def test_overload_and_lost_replicas_answer_503_with_retry_after():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError
    from starlette.requests import Request as StarletteRequest

    from rayrec.serving.http import error_handlers

    request = StarletteRequest({"type": "http", "method": "POST", "path": "/recommend", "headers": [],
                                "query_string": b""})
    for handler, exc in [(error_handlers.backpressure, BackPressureError(num_queued_requests=9, max_queued_requests=8)),
                         (error_handlers.replica_lost, ActorDiedError())]:
        response = asyncio.run(handler(request, exc))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "retry" in json.loads(response.body)["message"]


def test_every_protected_route_of_the_api_declares_the_key_scheme():
    from rayrec.serving.http.ingress import app

    schema = app.openapi()
    protected = {(method.upper(), path) for path, ops in schema["paths"].items() for method, op in ops.items()
                 if op.get("security")}
    assert {("POST", "/feedback"), ("PUT", "/items/{item_id}"), ("DELETE", "/items/{item_id}"),
            ("DELETE", "/users/{user_id}"), ("POST", "/admin/reload")} <= protected
    assert not {p for p in protected if p[0] == "GET" or p[1] == "/recommend"}
    for method, path in protected:
        assert {"401", "403"} <= set(schema["paths"][path][method.lower()]["responses"])


def test_keys_file_is_not_part_of_logged_args(tmp_path):
    """AppArgs only ever carry the file's path; the keys stay out of configs and logs."""
    from rayrec.serving.config import AppArgs

    key_file = tmp_path / "keys"
    key_file.write_text(KEY)
    args = AppArgs(model_dir="/m", security={"api_keys_file": str(key_file)})
    assert KEY not in args.model_dump_json() and KEY not in repr(args)
    assert os.environ.get("RAYREC_API_KEYS", "") == "" or KEY not in os.environ["RAYREC_API_KEYS"]


def test_routes_of_included_routers_are_guarded_too():
    """Serve re-mounts the ingress's class-based routes with include_router (nested routers)."""
    from fastapi import APIRouter

    app = FastAPI()
    app.add_middleware(RequestGuard, policy=lambda: GuardPolicy(keys=ApiKeys([KEY])))
    router = APIRouter()

    @router.post("/write", dependencies=[Security(WRITE_ACCESS)])
    async def write() -> dict:
        return {}

    @router.post("/recommend")
    async def recommend() -> dict:
        return {}

    app.include_router(router, prefix="/api")
    with TestClient(app) as c:
        assert c.post("/api/write").status_code == 401
        assert c.post("/api/write", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/api/recommend").status_code == 200
