"""The metrics recording helper and the buffered JSON-lines request log, without Ray.

The same helper records into Ray's metrics inside a replica; tests/integration/
test_reliability.py reads those back from the node's Prometheus endpoint.
"""

from __future__ import annotations

import json
import time

import numpy as np

from rayrec.serving.graph.observability import InMemoryMetrics, RequestLog, ServingMetrics
from rayrec.serving.stages.index import ItemIndex, faiss_available


def test_requests_stages_and_feedback_are_counted():
    metrics = ServingMetrics(InMemoryMetrics)
    metrics.record_request("POST", "/recommend", 200, 0.004)
    metrics.record_request("POST", "/recommend", 200, 0.006)
    metrics.record_request("POST", "/feedback", 401, 0.001)
    assert metrics.requests.values[("/recommend", "POST", "200")] == 2
    assert metrics.requests.values[("/feedback", "POST", "401")] == 1
    assert metrics.request_latency.observations[("/recommend",)] == [4.0, 6.0]

    metrics.record_stage("scorer", 0.002, "ok")
    metrics.record_stage("scorer", 0.001, "rejected")
    assert metrics.stage_requests.values[("scorer", "ok")] == 1
    assert metrics.stage_requests.values[("scorer", "rejected")] == 1
    assert len(metrics.stage_latency.observations[("scorer",)]) == 2

    metrics.record_feedback(stored=3, duplicates=1, lag_seconds=0.012)
    assert metrics.feedback_events.values[("stored",)] == 3
    assert metrics.feedback_events.values[("duplicate",)] == 1
    assert metrics.freshness_lag.observations[()] == [0.012]


def test_model_version_gauges_follow_a_reload():
    metrics = ServingMetrics(InMemoryMetrics)
    metrics.record_model("scorer", 1, "v1")
    metrics.record_model("scorer", 1, "v1")  # unchanged: no new samples
    metrics.record_model("scorer", 2, "v2")
    assert metrics.model_generation.values[("scorer",)] == 2
    assert metrics.model_info.values[("scorer", "v2")] == 1
    assert metrics.model_info.values[("scorer", "v1")] == 0


def test_ann_recall_probe():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    ids = [f"i{i}" for i in range(2000)]
    assert ItemIndex(ids, vectors, exact_max_items=10**6).recall_at_k() == 1.0  # exact search
    metrics = ServingMetrics(InMemoryMetrics)
    if faiss_available():
        index = ItemIndex(ids, vectors, exact_max_items=100, hnsw_m=8, ef_search=64)
        recall = index.recall_at_k(samples=16, k=10, seed=1)
        assert 0.5 <= recall <= 1.0
        metrics.record_ann_recall(recall)
        assert metrics.ann_recall.values[()] == recall


def test_request_log_writes_json_lines_and_costs_the_caller_little(tmp_path):
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path), flush_interval_s=0.05)
    n = 20_000
    started = time.perf_counter()
    for i in range(n):
        log.log(method="POST", route="/recommend", status=200, ms=1.5, n=i)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    time.sleep(0.3)  # an idle queue is flushed without close()
    assert path.read_text().count("\n") > 0
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == n
    first = json.loads(lines[0])
    assert first["route"] == "/recommend" and first["status"] == 200 and first["n"] == 0 and "ts" in first
    assert [json.loads(line)["n"] for line in lines[-3:]] == [n - 3, n - 2, n - 1]
    print(json.dumps({"request_log_enqueue_us_per_call": round(per_call_us, 2)}))
    assert per_call_us < 200  # an enqueue, not a write (typically ~5 us)


def test_two_writers_of_one_request_log_never_mix_lines(tmp_path):
    """Every ingress replica on a machine may append to the same file: whole lines per write."""
    import threading

    path = tmp_path / "shared.jsonl"
    logs = [RequestLog(str(path), flush_interval_s=0.01) for _ in range(2)]

    def write(log: RequestLog, writer: int) -> None:
        for i in range(5000):
            log.log(writer=writer, n=i, route="/feedback", padding="x" * (i % 97))

    threads = [threading.Thread(target=write, args=(log, w)) for w, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 10_000
    for writer in (0, 1):
        assert [line["n"] for line in lines if line["writer"] == writer] == list(range(5000))
