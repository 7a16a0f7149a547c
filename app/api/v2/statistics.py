"""Per-model inference statistics in the shape of Triton's statistics extension (`GET /v2/models/stats`), which
perf_analyzer reads before and after each measurement window (it stops with an error when the route fails).

Counts are per worker process and per V2 name as the client addressed it (`dense` and `dense.full` are counted
apart), only for names that resolved to a served graph (so the table stays bounded). Times per request:
`compute_input` is decoding and checking the body, `compute_infer` is the `InferenceEngine.run` call (the
batcher's queue wait included: the engine does not report it per request, so `queue` stays 0),
`compute_output` is encoding the response, `success`/`fail` the whole handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _ModelCounters:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    stages: dict[str, _Duration] = field(default_factory=lambda: {stage: _Duration() for stage in STAGES})
    batches: dict[int, dict[str, _Duration]] = field(default_factory=dict)


@dataclass
class RequestTimer:
    """Stage times of one request, in nanoseconds, filled in by the route as it goes."""

    started: int = field(default_factory=time.perf_counter_ns)
    compute_input: int = 0
    compute_infer: int = 0
    compute_output: int = 0
    rows: int = 0


class InferenceStatistics:
    """Counters per V2 model name and version; updated from the event loop, read by the stats route (a lock keeps a
    snapshot consistent if a worker thread ever records)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _ModelCounters] = {}

    def record(self, name: str, version: str, timer: RequestTimer, ok: bool) -> None:
        total = time.perf_counter_ns() - timer.started
        with self._lock:
            counters = self._models.setdefault((name, version), _ModelCounters())
            counters.last_inference_ms = time.time_ns() // 1_000_000
            if not ok:
                counters.stages["fail"].add(total)
                return
            counters.stages["success"].add(total)
            counters.inference_count += timer.rows
            counters.execution_count += 1
            for stage in ("compute_input", "compute_infer", "compute_output"):
                counters.stages[stage].add(getattr(timer, stage))
            batch = counters.batches.setdefault(
                timer.rows, {s: _Duration() for s in ("compute_input", "compute_infer", "compute_output")}
            )
            for stage, duration in batch.items():
                duration.add(getattr(timer, stage))

    def snapshot(self, models: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """Triton's `model_stats` entries for `(name, version)` pairs (zeros for names never called)."""
        entries = []
        with self._lock:
            for name, version in models:
                counters = self._models.get((name, version)) or _ModelCounters()
                entries.append(
                    {
                        "name": name,
                        "version": version,
                        "last_inference": counters.last_inference_ms,
                        "inference_count": counters.inference_count,
                        "execution_count": counters.execution_count,
                        "inference_stats": {stage: d.as_dict() for stage, d in counters.stages.items()},
                        "batch_stats": [
                            {"batch_size": size, **{stage: d.as_dict() for stage, d in stages.items()}}
                            for size, stages in sorted(counters.batches.items())
                        ],
                    }
                )
        return entries
