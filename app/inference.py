"""The one caller of `session.run`.

Every ONNX Runtime call of the service (requests of every protocol, and the warm-up at load) goes through
`InferenceEngine`, so this is where cross-cutting concerns live: calls run off the event loop with a bounded
number in flight per model, outputs are checked against the card (shape and finiteness), and batch sizes and
compute time are measured. A dynamic batcher or a bounded admission queue belongs here too, in front of
`_run_now`, without any route having to change.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
import onnxruntime as ort

from app.cards import GraphCard, TensorSpec
from app.errors import InferenceError, InvalidInput
from app.metrics import Metrics

log = logging.getLogger("app.inference")


@dataclass(frozen=True)
class GraphSession:
    """An open ONNX Runtime session for one graph of one model, with the card's description of its tensors."""

    model: str
    role: str
    card: GraphCard
    session: ort.InferenceSession

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.card.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.card.outputs

    @property
    def label(self) -> str:
        return f"{self.model}.{self.role}"


def _bind_axes(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the named (dynamic) axes as the given input arrays set them."""
    bound: dict[str, int] = {}
    for spec in specs:
        shape = arrays[spec.name].shape
        for want, got in zip(spec.shape, shape, strict=False):
            if isinstance(want, str):
                bound.setdefault(want, int(got))
    return bound


def check_shape(spec: TensorSpec, shape: tuple[int, ...], axes: Mapping[str, int]) -> str | None:
    """Why `shape` does not fit `spec` given the named axes bound so far, or None when it fits."""
    if len(shape) != len(spec.shape):
        return f"rank {len(shape)} (shape {list(shape)}), expected rank {len(spec.shape)} {spec.shape}"
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        expected = axes.get(want) if isinstance(want, str) else want
        if expected is not None and expected != got:
            return f"axis {axis} ({want}) is {got}, expected {expected} (shape {list(shape)} vs {spec.shape})"
    return None


class InferenceEngine:
    """Runs graphs: bounded concurrency per model, off the event loop, outputs checked, metrics recorded."""

    def __init__(self, metrics: Metrics | None = None, concurrency_per_model: int = 2) -> None:
        self._metrics = metrics
        self._concurrency = concurrency_per_model
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    def _limiter(self, model: str) -> anyio.CapacityLimiter:
        limiter = self._limiters.get(model)
        if limiter is None:
            limiter = self._limiters[model] = anyio.CapacityLimiter(self._concurrency)
        return limiter

    async def run(self, graph: GraphSession, feeds: Mapping[str, np.ndarray], endpoint: str) -> dict[str, np.ndarray]:
        """Run `graph` on `feeds` in a worker thread; returns every output by name."""
        call = functools.partial(self.run_blocking, graph, feeds, endpoint)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter(graph.model))

    def run_blocking(
        self, graph: GraphSession, feeds: Mapping[str, np.ndarray], endpoint: str
    ) -> dict[str, np.ndarray]:
        """Run `graph` on `feeds` in the calling thread (the warm-up, and the worker threads of `run`)."""
        axes = self._check_inputs(graph, feeds)
        started = time.perf_counter()
        try:
            values = graph.session.run(None, dict(feeds))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidArgument, RuntimeException)
            log.error("onnx runtime failed on %s: %s", graph.label, exc)
            raise InferenceError(
                f"ONNX Runtime failed on {graph.label}: {str(exc).splitlines()[0][:300]}",
                {"model": graph.model, "graph": graph.role},
            ) from exc
        elapsed = time.perf_counter() - started
        outputs = {spec.name: value for spec, value in zip(graph.outputs, values, strict=True)}
        self._check_outputs(graph, outputs, axes)
        if self._metrics is not None and endpoint != "warmup":
            batch = next(iter(feeds.values())).shape[0] if feeds else 0
            labels = (graph.model, graph.role, endpoint)
            self._metrics.batch_size.labels(*labels).observe(batch)
            self._metrics.inference_latency.labels(*labels).observe(elapsed)
        return outputs

    @staticmethod
    def _check_inputs(graph: GraphSession, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        names = [spec.name for spec in graph.inputs]
        if sorted(feeds) != sorted(names):
            raise InvalidInput(f"{graph.label} takes inputs {names}, got {sorted(feeds)}")
        axes = _bind_axes(graph.inputs, feeds)
        for spec in graph.inputs:
            array = feeds[spec.name]
            if array.dtype != spec.numpy_dtype:
                raise InvalidInput(f"{graph.label} input {spec.name} must be {spec.dtype}, got {array.dtype}")
            problem = check_shape(spec, array.shape, axes)
            if problem:
                raise InvalidInput(f"{graph.label} input {spec.name}: {problem}", {"tensor": spec.name})
        return axes

    @staticmethod
    def _check_outputs(graph: GraphSession, outputs: Mapping[str, np.ndarray], axes: Mapping[str, int]) -> None:
        # A model that silently changes a size (e.g. a conv net on a side not divisible by its stride) or
        # produces NaN must fail loudly here rather than answer wrong numbers or crash the JSON encoder.
        for spec in graph.outputs:
            value = outputs[spec.name]
            problem = check_shape(spec, value.shape, axes)
            if problem:
                raise InferenceError(
                    f"{graph.label} returned output {spec.name} with {problem}",
                    {"model": graph.model, "graph": graph.role, "output": spec.name},
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise InferenceError(
                    f"{graph.label} produced non-finite values in output {spec.name}",
                    {"model": graph.model, "graph": graph.role, "output": spec.name},
                )
