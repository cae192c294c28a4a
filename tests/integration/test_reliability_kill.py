"""Faults under load (slow): a SIGKILLed replica of every deployment, and a kill -9 of the
whole ``rayrec serve`` process group. Acknowledged feedback must never be lost.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rayrec.testing import write_toy_model
from rayrec.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """A benchmarks/ script as a module: the test and the benchmark share one implementation."""
    module_name = f"rayrec_benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_killing_a_replica_of_each_deployment_loses_no_acknowledged_event(tmp_path):
    pytest.importorskip("ray")
    report = load_benchmark("replica_kill").run(tmp_path, replicas=2, clients=6, warmup_s=3, settle_s=2,
                                                log=lambda line: None)
    print(json.dumps(report))
    assert report["feedback_events_acknowledged"] > 100
    assert report["acknowledged_events_lost"] == 0
    assert [k["deployment"] for k in report["kills"]] == ["Ingress", "Preprocessor", "HistoryEncoder",
                                                          "Retriever", "FeedbackIngestor"]
    for kill in report["kills"]:
        assert kill["seconds_to_full_capacity"] is not None, kill  # the dead replica was replaced
        # only requests in flight on the killed replica may fail: at most one per client
        assert kill["failed_requests"] <= report["clients"], kill
    # every batch that failed was re-sent with the same event ids and accepted afterwards
    assert report["failed_batches_resent_ok"] == report["failed_feedback_batches"]
    assert report["events_stored"] >= report["feedback_events_acknowledged"]


# -- whole-process crash --------------------------------------------------------------------------
def start_server(model: Path, state: Path, port: int, ray_tmp: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = str(ray_tmp)  # so leftover Ray processes of this server can be found afterwards
    return subprocess.Popen(
        [sys.executable, "-m", "rayrec", "serve", "--model", str(model), "--port", str(port), "--state", str(state),
         "--num-cpus", "2"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the server exited early"
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("the server did not become healthy")


def processes_of(ray_tmp: Path) -> list[int]:
    """PIDs of every process of the server's Ray instance: they all inherited RAY_TMPDIR=ray_tmp
    (Ray renames worker processes, so their command lines do not say which instance they are)."""
    marker = f"RAY_TMPDIR={ray_tmp}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_everything(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """kill -9 the server's process group at once, then every process of its Ray instance
    that lives outside the group (started in sessions of their own): a crash of the whole server."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        survivors = processes_of(ray_tmp)
        if not survivors:
            return
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"processes of the killed server survive: {processes_of(ray_tmp)}")


def test_kill_9_of_the_whole_server_mid_ingest_loses_no_acknowledged_event(tmp_path):
    """kill -9 of ``rayrec serve`` (its process group: driver, Ray, every replica) while
    clients send feedback; the store opens cleanly and holds every acknowledged event, and a
    restarted server serves them."""
    model = write_toy_model(tmp_path / "models" / "toy", num_items=300, dim=16)
    state = tmp_path / "state.db"
    ray_tmp = Path("/tmp") / f"rr-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    ray_tmp.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model, state, port, ray_tmp, tmp_path / "server.log")
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def send(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                events = [{"user_id": f"crash-{worker}", "item_id": f"item{(n + j) % 300}", "event_type": "click",
                           "event_id": f"w{worker}-{n}-{j}"} for j in range(3)]
                n += 1
                try:
                    if client.post("/feedback", json={"events": events}).status_code == 200:
                        with lock:
                            acknowledged.update(e["event_id"] for e in events)
                except httpx.HTTPError:
                    pass

    try:
        wait_healthy(url, proc)
        threads = [threading.Thread(target=send, args=(w,), daemon=True) for w in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.time() + 60
        while len(acknowledged) < 300 and time.time() < deadline:
            time.sleep(0.1)
        kill_everything(proc, ray_tmp)  # mid-ingest: the clients are still sending
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert len(acknowledged) >= 300

        # The store opens cleanly (WAL replayed) and holds every acknowledged event.
        with sqlite3.connect(state) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        missing = acknowledged - stored
        print(json.dumps({"acknowledged": len(acknowledged), "stored": len(stored), "lost": len(missing)}))
        assert not missing, f"{len(missing)} acknowledged events lost"

        # A restarted server serves them: the user's own events drive the recommendations.
        proc = start_server(model, state, port, ray_tmp, tmp_path / "server.log")
        wait_healthy(url, proc)
        answer = httpx.post(url + "/recommend", json={"user_id": "crash-0", "k": 5}, timeout=30)
        assert answer.status_code == 200 and answer.json()["items"][0]["explanation"]["source"] == "history"
        again = httpx.post(url + "/feedback", timeout=30,
                           json={"events": [{"user_id": "crash-0", "item_id": "item1", "event_id": "w0-0-0"}]})
        assert again.json() == {"accepted": 1, "stored": 0, "duplicates": 1}  # idempotent across the crash
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        kill_everything(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
