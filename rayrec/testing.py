"""Pytest helpers for plugin authors, installed as the ``rayrec`` pytest plugin.

Use the ``register_rayrec_plugin`` fixture to register a plugin for one test only::

    def test_my_scorer(register_rayrec_plugin):
        register_rayrec_plugin(my_plugin_module)
        assert "my-scorer" in rayrec.plugins.registry().names("scorer")

Whatever the test does, the plugin is unregistered afterwards.

``RedisServer(directory).start()`` runs a private, durable ``redis-server`` for tests of the
Redis state store (or a state-store plugin); ``redis_unavailable()`` says why it cannot run.

``write_toy_model(directory, num_items=..., dim=...)`` writes a :class:`ToyModel` directory:
an untrained model of known structure (clustered items, users who stay in one cluster) that
serves like a trained one, for tests that need a model but not training.

``serve_locally(args)`` runs the real serving graph on a local Ray for end-to-end tests and
yields its base URL::

    with serve_locally(AppArgs(model_dir=..., state=...)) as url:
        httpx.post(url + "/recommend", json={"user_id": "u1"})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from unittest import mock

import pytest

from rayrec.models.toy import ToyModel, write_toy_model  # noqa: F401  (tests and plugins import them from here)
from rayrec.serving.graph.proxy import free_port  # noqa: F401  (tests and plugins import it from here)

if TYPE_CHECKING:
    from rayrec.serving.config import AppArgs




class RedisServer:
    """A private redis-server process: durable (appendfsync always), started and stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            assert self.process.poll() is None, "redis-server exited at start"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=20)
        self.process = None


def redis_unavailable() -> str | None:
    """Why a RedisServer cannot run here (no redis-server, no client), or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client is not installed (pip install 'rayrec[redis]')"
    return None


@contextlib.contextmanager
def serve_locally(args: "AppArgs", num_cpus: int = 2, cluster_env: dict[str, str] | None = None,
                  proxy: str | None = None) -> Iterator[str]:
    """Start a local Ray (``num_cpus`` logical CPUs, 2 like a small laptop) and the rayrec
    graph on a free port, access logs off; yield ``http://127.0.0.1:PORT``; shut both down.
    ``proxy``: the HTTP proxy, as ``rayrec serve --proxy`` (default: the same as ``rayrec serve``);
    ``cluster_env``: more environment variables of the Ray processes (e.g. Serve feature flags)."""
    import ray
    from ray import serve

    from rayrec.serving.app import build_app
    from rayrec.serving.graph.proxy import default_proxy, local_ray_env

    port = free_port()
    # Only while Ray starts: its processes keep what they inherited, later clusters start clean.
    with mock.patch.dict(os.environ, {**local_ray_env(proxy or default_proxy()), **(cluster_env or {})}):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(build_app(args), name="rayrec", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def register_rayrec_plugin() -> Iterator[Callable[..., str]]:
    """Register plugins for the duration of one test; always unregisters them."""
    from rayrec import plugins

    registered: list[str] = []

    def register(plugin: Any, name: str | None = None) -> str:
        plugins.load_plugins()
        if plugins.pm.is_registered(plugin):
            # Already loaded through its entry point: use it, and leave it registered afterwards.
            return plugins.pm.get_name(plugin)
        plugin_name = plugins.register_plugin(plugin, name=name)
        registered.append(plugin_name)
        return plugin_name

    try:
        yield register
    finally:
        for plugin_name in reversed(registered):
            if plugins.pm.get_plugin(plugin_name) is not None:
                plugins.unregister_plugin(plugin_name)
