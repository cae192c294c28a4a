"""Sustained load: throughput, p50/p99 latency and error rate with 1 and 2 replicas per stage.

    python benchmarks/load.py                          # 60 s per configuration, 16 concurrent clients
    python benchmarks/load.py --duration 300           # a few minutes each
    python benchmarks/load.py --replicas 1 --clients 32
    python benchmarks/load.py --state redis://127.0.0.1:6379/0

A local Ray (``--num-cpus`` logical CPUs, 2 by default like the target machine; the load
generator shares the cores) serves a toy model with ``--items`` items. Asynchronous clients
keep ``--clients`` requests in flight: ``/recommend`` for a mix of known, new and anonymous
users, and ``/feedback`` for ``--feedback-share`` of the requests. Each configuration warms
up, then runs for ``--duration`` seconds. Prints one JSON object per configuration:
requests/s, p50/p99 latency per route, error rate and the statuses seen.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rayrec.testing import free_port

import numpy as np

STAGES = ("ingress", "preprocessor", "user_encoder", "scorer", "feedback")


async def drive(url: str, duration_s: float, clients: int, feedback_share: float, items: int, seed: int = 0
                ) -> dict[str, Any]:
    """Keep ``clients`` requests in flight for ``duration_s``; returns the figures."""
    import httpx

    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    deadline = time.perf_counter() + duration_s

    async def client_task(worker: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + worker)
        while time.perf_counter() < deadline:
            user = rng.choice([f"user{rng.randrange(500)}", f"new-{rng.randrange(10_000)}"])
            if rng.random() < feedback_share:
                route = "/feedback"
                body = {"events": [{"user_id": user, "item_id": f"item{rng.randrange(items)}", "event_type": "click",
                                    "event_id": uuid.uuid4().hex}]}
            else:
                route = "/recommend"
                body = {"user_id": user, "k": 10}
                if rng.random() < 0.2:
                    body["recent_items"] = [f"item{rng.randrange(items)}" for _ in range(5)]
            started = time.perf_counter()
            try:
                status = str((await client.post(route, json=body)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies[route].append(time.perf_counter() - started)
            statuses[status] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_task(w, client) for w in range(clients)))
        elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    errors = total - statuses.get("200", 0)
    every = [value for values in latencies.values() for value in values]
    return {
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(every, 50)), 1) if every else None,
        "p99_ms": round(1000 * float(np.percentile(every, 99)), 1) if every else None,
        "by_route": {route: {"requests": len(values), "p50_ms": round(1000 * float(np.percentile(values, 50)), 1),
                             "p99_ms": round(1000 * float(np.percentile(values, 99)), 1)}
                     for route, values in latencies.items() if values},
        "error_rate": round(errors / total, 5) if total else None,
        "statuses": dict(statuses),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="Seconds of measured load per configuration.")
    parser.add_argument("--warmup", type=float, default=5, help="Seconds of unmeasured load first.")
    parser.add_argument("--replicas", default="1,2", help="Replicas per stage to measure, comma-separated.")
    parser.add_argument("--clients", type=int, default=16, help="Requests kept in flight.")
    parser.add_argument("--feedback-share", type=float, default=0.1, help="Share of requests that are /feedback.")
    parser.add_argument("--items", type=int, default=10_000, help="Catalogue size of the toy model.")
    parser.add_argument("--num-cpus", type=int, default=2, help="Logical CPUs of the local Ray.")
    parser.add_argument("--state", default=None, help="State store URL (default: a fresh SQLite file per run).")
    options = parser.parse_args()

    import ray
    from ray import serve

    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs
    from rayrec.testing import write_toy_model

    workdir = Path(tempfile.mkdtemp(prefix="rayrec-load-"))
    results = []
    try:
        model = write_toy_model(workdir / "models" / "toy", num_items=options.items, dim=64, num_users=500)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        for replicas in [int(r) for r in options.replicas.split(",") if r.strip()]:
            # Fractional CPUs so that 5 stages x 2 replicas fit the logical CPUs; Ray does not pin cores.
            cpus = min(0.25, options.num_cpus / (len(STAGES) * replicas) * 0.9)
            state = options.state or f"sqlite:///{workdir / f'state-{replicas}.db'}"
            args = AppArgs(model_dir=str(model), state=state, observability={"ann_recall_probe_interval_s": 0},
                           stages={name: {"num_replicas": replicas, "num_cpus": cpus} for name in STAGES})
            serve.run(build_app(args), name="rayrec", route_prefix="/")
            asyncio.run(drive(url, options.warmup, options.clients, options.feedback_share, options.items, seed=1))
            figures = asyncio.run(drive(url, options.duration, options.clients, options.feedback_share, options.items))
            result = {"replicas_per_stage": replicas, "clients": options.clients, "items": options.items, **figures}
            print(json.dumps(result), flush=True)
            results.append(result)
            serve.delete("rayrec")
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all((r["error_rate"] or 0) < 0.01 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
