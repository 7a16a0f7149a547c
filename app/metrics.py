"""Prometheus metrics, one collector registry per app (so several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Request counts, errors and latency per route and model; batch sizes and ONNX time per model and endpoint.

    Label values are bounded: `route` is the route template (`/v1/models/{name}/encode`, or `unmatched`) and
    `model` is a name from the registry's own list (or empty), never raw client input.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ae_http_requests", "HTTP requests answered", ["method", "route", "model", "status"], registry=r
        )
        self.errors = Counter(
            "ae_http_errors", "HTTP requests answered with an error, by error type", ["route", "model", "type"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ae_http_request_duration_seconds", "Time from request start to the last response byte",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("ae_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram(
            "ae_inference_batch_size", "Rows per ONNX Runtime call", ["model", "graph", "endpoint"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "ae_inference_duration_seconds", "Time inside ONNX Runtime per call", ["model", "graph", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_ready = Gauge(
            "ae_model_ready", "1 when the model is loaded and serving, else 0", ["model"], registry=r
        )
        self.model_load_seconds = Gauge(
            "ae_model_load_seconds", "Time to verify, open and warm the model's sessions", ["model"], registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
