"""Replica kill: SIGKILL one replica of each deployment in turn under steady load.

    python benchmarks/replica_kill.py                      # 2 replicas per stage, 8 clients, SQLite
    python benchmarks/replica_kill.py --replicas 1         # no spare replica: requests wait for the restart
    python benchmarks/replica_kill.py --state redis://127.0.0.1:6379/0

A local Ray (``--num-cpus`` logical CPUs) serves a toy model. Client threads send a steady mix
of ``/recommend`` (80 %) and ``/feedback`` (20 %, every event with a unique ``event_id``).
Then, for Ingress, Preprocessor, HistoryEncoder, Retriever and FeedbackIngestor in turn,
one replica process is found through Ray's actor table and killed with SIGKILL, and the
benchmark waits until the deployment is back to full capacity (the dead replica replaced,
all replicas alive and healthy). At the end the event store is read back.

Prints one JSON object with, per kill: the time back to full capacity and the requests that
failed meanwhile (by status); and in total: requests, failures, feedback events acknowledged
(HTTP 200), and how many of those are missing from the store. Targets: 0 acknowledged events
lost; failures only for requests in flight on the killed replica; back to full capacity
within 15 s. ``tests/integration/test_reliability_kill.py`` (slow) runs :func:`run`.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrec.testing import free_port

DEPLOYMENTS = ["Ingress", "Preprocessor", "HistoryEncoder", "Retriever", "FeedbackIngestor"]
APP = "rayrec"


@dataclass
class LoadLog:
    """What the client threads saw; appended under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, status or error)
    acknowledged: set[str] = field(default_factory=set)  # event ids answered 200
    unacknowledged: list[list[dict]] = field(default_factory=list)  # batches that failed: re-sent at the end

    def record(self, kind: str, status: str, acked: list[str] | None = None, failed: list[dict] | None = None):
        with self.lock:
            self.outcomes.append((time.time(), kind, status))
            if acked:
                self.acknowledged.update(acked)
            if failed:
                self.unacknowledged.append(failed)


def client_loop(url: str, users: list[str], items: list[str], stop: threading.Event, log: LoadLog,
                feedback_share: float, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            user = rng.choice(users)
            if rng.random() < feedback_share:
                events = [{"user_id": user, "item_id": rng.choice(items), "event_type": "click",
                           "event_id": uuid.uuid4().hex} for _ in range(rng.randint(1, 4))]
                try:
                    response = client.post("/feedback", json={"events": events})
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                ok = status == "200"
                log.record("feedback", status, acked=[e["event_id"] for e in events] if ok else None,
                           failed=None if ok else events)
            else:
                try:
                    status = str(client.post("/recommend", json={"user_id": user, "k": 10}).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                log.record("recommend", status)


def replica_actors(deployment: str) -> list[dict]:
    """ALIVE replica actors of ``deployment`` (class ``ServeReplica:<app>:<deployment>``)."""
    from ray._private import state

    wanted = f"ServeReplica:{APP}:{deployment}"
    return [a for a in state.actors().values() if a.get("ActorClassName") == wanted and a.get("State") == "ALIVE"]


def at_full_capacity(deployment: str, target: int, killed_actor: str | None) -> bool:
    from ray import serve

    alive = replica_actors(deployment)
    if len(alive) < target or any(a["ActorID"] == killed_actor for a in alive):
        return False
    status = serve.status().applications[APP].deployments[deployment]
    return str(status.status).endswith("HEALTHY") and status.replica_states.get("RUNNING", 0) >= target


def stored_event_ids(state_url: str) -> set[str]:
    if state_url.startswith("redis"):
        from rayrec.state import open_state_store

        store = open_state_store(state_url)
        ids = set(store._connect().hkeys(store._key("event_ids")))
        store.close()
        return ids
    from rayrec.state.sqlite import sqlite_path_from_url

    with sqlite3.connect(sqlite_path_from_url(state_url.split("?", 1)[0])) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM events WHERE event_id IS NOT NULL")}


def run(workdir: Path, replicas: int = 2, clients: int = 8, num_cpus: int = 2, warmup_s: float = 5,
        settle_s: float = 5, recovery_timeout_s: float = 60, state: str | None = None,
        deployments: list[str] | None = None, log=print) -> dict[str, Any]:
    """Start the graph, load it, kill one replica per deployment in turn; returns the figures.

    Leaves Ray shut down. ``state``: a state URL (default: a SQLite file in ``workdir``).
    """
    import httpx
    import ray
    from ray import serve

    from rayrec.serving.app import build_app
    from rayrec.serving.config import AppArgs
    from rayrec.testing import write_toy_model

    model = write_toy_model(workdir / "models" / "toy", num_items=2000, dim=32, num_users=500)
    state = state or f"sqlite:///{workdir / 'state.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stage = {"num_replicas": replicas, "num_cpus": 0.1}
    args = AppArgs(model_dir=str(model), state=state, observability={"ann_recall_probe_interval_s": 0},
                   stages={name: stage for name in ("ingress", "preprocessor", "user_encoder", "scorer", "feedback")})
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    load = LoadLog()
    threads: list[threading.Thread] = []
    kills: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(build_app(args), name=APP, route_prefix="/")
        users = [f"user{u}" for u in range(500)] + [f"new-user{u}" for u in range(200)]
        items = [f"item{i}" for i in range(2000)]
        threads = [threading.Thread(target=client_loop, args=(url, users, items, stop, load, 0.2, seed), daemon=True)
                   for seed in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(warmup_s)
        for deployment in deployments or DEPLOYMENTS:
            victims = replica_actors(deployment)
            if not victims:
                raise RuntimeError(f"no live replica of {deployment} found in Ray's actor table")
            victim = victims[0]
            killed_at = time.time()
            os.kill(int(victim["Pid"]), signal.SIGKILL)
            recovered_at = None
            while time.time() - killed_at < recovery_timeout_s:
                time.sleep(0.2)
                if at_full_capacity(deployment, replicas, victim["ActorID"]):
                    recovered_at = time.time()
                    break
            time.sleep(settle_s)  # errors that surface late are still counted for this kill
            window_end = time.time()
            with load.lock:
                window = [o for o in load.outcomes if killed_at <= o[0] <= window_end]
            failed = Counter(status for _, _, status in window if status != "200")
            kills.append({
                "deployment": deployment,
                "pid": int(victim["Pid"]),
                "seconds_to_full_capacity": None if recovered_at is None else round(recovered_at - killed_at, 2),
                "requests_meanwhile": len(window),
                "failed_requests": sum(failed.values()),
                "failed_by_status": dict(failed),
            })
            log(json.dumps(kills[-1]))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        # Batches that failed are re-sent with the same event ids: whatever was stored before
        # the failure is not stored twice.
        resent = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            for events in load.unacknowledged:
                for _ in range(10):
                    try:
                        if client.post("/feedback", json={"events": events}).status_code == 200:
                            resent += 1
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        serve.shutdown()
        ray.shutdown()
    stored = stored_event_ids(state)
    outcomes = load.outcomes
    statuses = Counter(status for _, _, status in outcomes)
    lost = load.acknowledged - stored
    return {
        "replicas_per_deployment": replicas,
        "clients": clients,
        "requests": len(outcomes),
        "failed_requests": sum(n for s, n in statuses.items() if s != "200"),
        "failed_by_status": {s: n for s, n in statuses.items() if s != "200"},
        "feedback_events_acknowledged": len(load.acknowledged),
        "acknowledged_events_lost": len(lost),
        "failed_feedback_batches": len(load.unacknowledged),
        "failed_batches_resent_ok": resent,
        "events_stored": len(stored),
        "max_seconds_to_full_capacity": max((k["seconds_to_full_capacity"] or float("inf") for k in kills), default=None),
        "kills": kills,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2, help="Replicas per deployment.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent client threads.")
    parser.add_argument("--num-cpus", type=int, default=2, help="Logical CPUs of the local Ray.")
    parser.add_argument("--settle", type=float, default=5, help="Seconds of load after each recovery.")
    parser.add_argument("--state", default=None, help="State store URL (default: a fresh SQLite file).")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rayrec-kill-"))
    try:
        report = run(workdir, options.replicas, options.clients, options.num_cpus, settle_s=options.settle,
                     state=options.state, log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report["acknowledged_events_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
