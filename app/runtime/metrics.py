"""Prometheus metrics, one collector registry per app (so several apps in one process never clash).

With several uvicorn workers (`python -m app --workers N`, N > 1) `app/__main__.py` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh temporary directory before the workers start: prometheus_client then keeps
every value in per-process files there and `/metrics`, whichever worker answers it, adds up every worker's
counters and histograms (gauges: the sum of live workers for in-flight and queue depth, the minimum for model
readiness, the maximum for load time). Each worker still has its own batcher and queue bound.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode when it is on (several workers), else None."""
    return os.environ.get(MULTIPROC_ENV) or None


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_dead_workers(path: str) -> list[int]:
    """Drop the live gauges (in flight, queue depth, readiness) of worker processes that no longer exist.

    A worker killed without its shutdown (`kill -9`, out of memory) leaves its gauge files behind, and the
    aggregate kept counting its last in-flight and queued requests for ever after uvicorn replaced it. Done on
    every scrape (a directory listing) and when a worker starts. Returns the process ids forgotten."""
    dead = set()
    try:
        names = os.listdir(path)
    except OSError:
        return []
    for name in names:
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in dead or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # alive, someone else's
            continue
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


class Metrics:
    """Request counts, errors and latency per route and model; batch sizes and ONNX time per model and endpoint.

    Label values are bounded: `route` is the route template (`/v1/models/{name}/encode`, or `unmatched`) and
    `model` is a name from the registry's own list (or empty), `version` one of its versions (or empty), never raw
    client input.
    """

    def __init__(self) -> None:
        path = multiprocess_dir()
        if path is not None:
            forget_dead_workers(path)  # e.g. the worker this one replaces
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "ae_http_requests", "HTTP requests answered", ["method", "route", "model", "version", "status"], registry=r
        )
        self.errors = Counter(
            "ae_http_errors", "HTTP requests answered with an error, by error type",
            ["route", "model", "version", "type"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ae_http_request_duration_seconds", "Time from request start to the last response byte",
            ["route", "model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "ae_http_requests_in_flight", "HTTP requests being handled", registry=r, multiprocess_mode="livesum"
        )
        # Per ONNX Runtime call (a merged batch counts once; `endpoint` is "mixed" when it merged several tasks).
        self.batch_size = Histogram(
            "ae_inference_batch_size", "Rows per ONNX Runtime call (after dynamic batching)",
            ["model", "version", "graph", "endpoint"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "ae_inference_duration_seconds", "Compute time: time inside ONNX Runtime per call",
            ["model", "version", "graph", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # Per request, per model graph (as Triton reports queue vs compute).
        self.queue_duration = Histogram(
            "ae_inference_queue_duration_seconds", "Time a request waited in its model graph's queue",
            ["model", "version", "graph"], buckets=QUEUE_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "ae_inference_queue_depth", "Requests waiting in the model graph's queue (summed over workers)",
            ["model", "version", "graph"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.rejected = Counter(
            "ae_inference_rejected", "Requests that got no inference: queue_full (503), timeout (504), cancelled",
            ["model", "version", "graph", "reason"], registry=r,
        )  # fmt: skip
        self.model_ready = Gauge(
            "ae_model_ready", "1 when the model is loaded and serving (in every worker), else 0", ["model", "version"],
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "ae_model_load_seconds", "Time to verify, open and warm the model's sessions", ["model", "version"],
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        # app/runtime/memory.py: freed memory handed back to the OS (glibc malloc_trim), per trim.
        self.memory_trim_seconds = Histogram(
            "ae_memory_trim_seconds", "Duration of one malloc_trim (in the offload pool, not on the event loop)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.memory_trimmed_bytes = Counter(
            "ae_memory_trimmed_bytes", "Resident memory given back to the OS by malloc_trim", registry=r
        )

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: prometheus_client validates the values and takes a lock on every
        `labels()` call, a few microseconds per request on the hot path. Label values are bounded (see above), so
        the cache is too."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker in multiprocess mode)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        forget_dead_workers(path)
        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(aggregate)

    def close(self) -> None:
        """This worker is stopping: drop its live gauges from the multiprocess aggregate."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
