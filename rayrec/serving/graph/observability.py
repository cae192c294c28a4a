"""Metrics on Ray's metrics system and structured request logs that stay off the hot path.

**Metrics** (exported by every Ray node's metrics agent in Prometheus format, names prefixed
``ray_`` there; Serve adds ``deployment``, ``replica`` and ``application`` tags):

=================================== ========= =============================================
``rayrec_http_requests``            counter   requests by ``route``, ``method``, ``status``
``rayrec_http_request_latency_ms``  histogram end-to-end latency in the ingress, by ``route``
``rayrec_stage_requests``           counter   calls of each stage by ``stage``, ``outcome``
``rayrec_stage_latency_ms``         histogram time spent inside each stage, by ``stage``
``rayrec_feedback_events``          counter   feedback events by ``result`` (stored, duplicate)
``rayrec_freshness_lag_s``          histogram from the ingress receiving feedback to the events
                                              being durable, i.e. visible to the next request
``rayrec_model_generation``         gauge     the model generation a stage serves, by ``stage``
``rayrec_model_info``               gauge     1 for the model version a stage serves, by
                                              ``stage`` and ``model_version`` (0 once replaced)
``rayrec_ann_recall_at_10``         gauge     recall@10 of the top-K index against exact search
                                              (sampled in the background; 1.0 while exact)
=================================== ========= =============================================

:class:`ServingMetrics` is the thin recording helper the deployments call; outside a Ray
process it records into memory (:class:`InMemoryMetrics`), which is what unit tests read.

**Request logs**: :class:`RequestLog` writes one JSON object per request to a file. The
request only puts a record on a queue (a ``QueueHandler`` that does not format); a
``QueueListener`` thread formats and writes, flushing in batches.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import threading
import time
from collections import defaultdict
from typing import Any

#: Histogram buckets in milliseconds: sub-millisecond stages up to multi-second outliers.
LATENCY_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
#: Freshness lag buckets in seconds.
LAG_S_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]


# -- metric backends ----------------------------------------------------------------------------
class _MemoryMetric:
    def __init__(self, name: str, description: str = "", boundaries=None, tag_keys=()) -> None:
        self.name = name
        self.tag_keys = tuple(tag_keys)
        self.values: dict[tuple, float] = defaultdict(float)
        self.observations: dict[tuple, list[float]] = defaultdict(list)

    def _key(self, tags: dict[str, str] | None) -> tuple:
        tags = tags or {}
        return tuple(str(tags.get(key, "")) for key in self.tag_keys)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.values[self._key(tags)] += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[self._key(tags)] = value

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.observations[self._key(tags)].append(value)


class InMemoryMetrics:
    """A stand-in for ``ray.serve.metrics`` that keeps values in memory (tests, no Ray)."""

    Counter = Gauge = Histogram = _MemoryMetric


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux ``/proc``), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ray_backend():
    import ray

    if not ray.is_initialized():
        return None
    from ray.serve import metrics

    return metrics


class ServingMetrics:
    """The metric objects of one process and one method per thing worth recording."""

    def __init__(self, backend: Any = None) -> None:
        backend = backend or _ray_backend() or InMemoryMetrics
        self.backend = backend
        self.requests = backend.Counter(
            "rayrec_http_requests", description="HTTP requests by route, method and status.",
            tag_keys=("route", "method", "status"))
        self.request_latency = backend.Histogram(
            "rayrec_http_request_latency_ms", description="End-to-end request latency in the ingress (ms).",
            boundaries=LATENCY_MS_BOUNDARIES, tag_keys=("route",))
        self.stage_requests = backend.Counter(
            "rayrec_stage_requests", description="Calls of each serving stage by outcome.", tag_keys=("stage", "outcome"))
        self.stage_latency = backend.Histogram(
            "rayrec_stage_latency_ms", description="Time spent inside each serving stage (ms).",
            boundaries=LATENCY_MS_BOUNDARIES, tag_keys=("stage",))
        self.feedback_events = backend.Counter(
            "rayrec_feedback_events", description="Feedback events ingested, by result (stored, duplicate).",
            tag_keys=("result",))
        self.freshness_lag = backend.Histogram(
            "rayrec_freshness_lag_s",
            description="Seconds from the ingress receiving feedback to it being durable and visible to the next request.",
            boundaries=LAG_S_BOUNDARIES)
        self.model_generation = backend.Gauge(
            "rayrec_model_generation", description="The model generation each stage serves.", tag_keys=("stage",))
        self.model_info = backend.Gauge(
            "rayrec_model_info", description="1 for the model version a stage serves (0 once replaced).",
            tag_keys=("stage", "model_version"))
        self.ann_recall = backend.Gauge(
            "rayrec_ann_recall_at_10", description="Sampled recall@10 of the top-K index against exact search.")
        self._served: dict[str, tuple[int, str]] = {}

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, tags={"route": route, "method": method, "status": str(status)})
        self.request_latency.observe(seconds * 1000.0, tags={"route": route})

    def record_stage(self, stage: str, seconds: float, outcome: str = "ok") -> None:
        """``outcome``: ok, rejected (a bad request) or error."""
        self.stage_requests.inc(1, tags={"stage": stage, "outcome": outcome})
        self.stage_latency.observe(seconds * 1000.0, tags={"stage": stage})

    def record_feedback(self, stored: int, duplicates: int, lag_seconds: float | None = None) -> None:
        if stored:
            self.feedback_events.inc(stored, tags={"result": "stored"})
        if duplicates:
            self.feedback_events.inc(duplicates, tags={"result": "duplicate"})
        if lag_seconds is not None and lag_seconds >= 0:
            self.freshness_lag.observe(lag_seconds)

    def record_model(self, stage: str, generation: int, version: str) -> None:
        """Cheap to call per request: only a change of generation touches the gauges."""
        previous = self._served.get(stage)
        if previous == (generation, version):
            return
        if previous is not None and previous[1] != version:
            self.model_info.set(0, tags={"stage": stage, "model_version": previous[1]})
        self.model_generation.set(generation, tags={"stage": stage})
        self.model_info.set(1, tags={"stage": stage, "model_version": version})
        self._served[stage] = (generation, version)

    def record_ann_recall(self, recall: float) -> None:
        self.ann_recall.set(float(recall))


_process_metrics: ServingMetrics | None = None
_process_lock = threading.Lock()


def serving_metrics() -> ServingMetrics:
    """This process's :class:`ServingMetrics` (Ray metrics inside Ray, else in memory)."""
    global _process_metrics
    if _process_metrics is None:
        with _process_lock:
            if _process_metrics is None:
                _process_metrics = ServingMetrics()
    return _process_metrics


# -- request logs -------------------------------------------------------------------------------
class _EnqueueOnly(logging.handlers.QueueHandler):
    """Puts the record on the queue as it is: no formatting in the request's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _JsonLines(logging.Handler):
    """Collects ``record.request`` as JSON lines; :meth:`flush` writes them in one call.

    Whole lines per write: several ingress replicas may append to the same file, and an
    append of one buffer is never interleaved with another process's.
    """

    max_pending_bytes = 1 << 16

    def __init__(self, write) -> None:
        super().__init__()
        self.write = write
        self._pending: list[str] = []
        self._pending_bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, "request", None) or {"message": record.getMessage()}
            line = json.dumps(fields, separators=(",", ":"), default=str) + "\n"
        except Exception:  # a log line must never take the listener thread down
            self.handleError(record)
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self.max_pending_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending, self._pending_bytes = "".join(self._pending), [], 0
        try:
            self.write(data)
        except (OSError, ValueError):
            pass


class _BatchingListener(logging.handlers.QueueListener):
    """Flushes its handlers whenever the queue has been idle for ``flush_interval_s``."""

    def __init__(self, q: queue.SimpleQueue, handler: logging.Handler, flush_interval_s: float) -> None:
        super().__init__(q, handler)
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()

    def dequeue(self, block: bool):
        while True:
            try:
                record = self.queue.get(block, timeout=self.flush_interval_s)
            except queue.Empty:
                self._flush()
                continue
            if time.monotonic() - self._last_flush > self.flush_interval_s:
                self._flush()
            return record

    def _flush(self) -> None:
        for handler in self.handlers:
            handler.flush()
        self._last_flush = time.monotonic()


class RequestLog:
    """JSON-lines request log at ``path`` (appended; ``-`` for stderr); ``log`` only enqueues."""

    def __init__(self, path: str, flush_interval_s: float = 0.5) -> None:
        import os
        import sys

        self.path = path
        self._fd: int | None = None
        if path == "-":
            def write(data: str) -> None:
                sys.stderr.write(data)
                sys.stderr.flush()
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

            def write(data: str) -> None:
                encoded = data.encode("utf-8")
                while encoded:  # a regular file takes it in one go; loop for the exotic case
                    encoded = encoded[os.write(self._fd, encoded):]
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._logger = logging.Logger(f"rayrec.requests.{id(self)}")  # private: no propagation to root
        self._logger.propagate = False
        self._logger.addHandler(_EnqueueOnly(self._queue))
        self._listener = _BatchingListener(self._queue, _JsonLines(write), flush_interval_s)
        self._listener.start()
        self._closed = False

    def log(self, **fields: Any) -> None:
        """Record one request; costs a LogRecord and a queue put, whatever the destination."""
        fields.setdefault("ts", round(time.time(), 6))
        self._logger.info("request", extra={"request": fields})

    def close(self) -> None:
        """Write everything queued and close the file."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop()  # handles what is queued, then joins the thread
        for handler in self._listener.handlers:
            handler.flush()
        if self._fd is not None:
            import os

            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
