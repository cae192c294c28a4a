"""Ray Serve's direct ingress: every ingress replica also answers HTTP on a port of its own.

Normally a request goes client -> Serve proxy -> (actor call) -> ingress replica, and the
replica then calls back into the proxy for the request body. With direct ingress (the Ray
Serve feature flag ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, read by the Ray processes when they
start) the ingress replica runs its own HTTP server as well, so a client or a load balancer
can skip the proxy: on a 2-core machine, with ``topology: ingress``, that cut p50 from 13.0 to
3.5 ms (benchmarks/serving.py --compare).
The proxy keeps serving its usual port, balancing over all ingress replicas.

Replica ports come from Ray's range (``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT``, 30000 by
default). A replacement replica may get another port, so a long-lived client should use the
proxy URL or a load balancer that follows the replica list (:func:`replica_urls`).
"""

from __future__ import annotations

import os
import time

DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    # A stopping replica keeps its port open this long (Ray's default, 30 s, gives a load
    # balancer time to deregister it); in-flight requests are always finished first.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def enable_before_ray_starts() -> None:
    """Turn direct ingress on for a Ray started by this process (the Ray processes inherit the
    environment); a cluster joined through RAY_ADDRESS must have been started with it. Values
    the user set win."""
    for name, value in DIRECT_INGRESS_ENV.items():
        os.environ.setdefault(name, value)
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"


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
        groups = ray.get(controller.get_target_groups.remote(app_name))
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
