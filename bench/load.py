"""Measuring: wrk against a URL (one fixed POST body, bounded in time), the batch sizes a server formed (from
its Prometheus metrics), and the bare runtime (the same graph called in-process with ONNX Runtime).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.servers import BENCH, http

LUA = BENCH / "post.lua"
_RESULT = re.compile(r"^BENCH-RESULT (\{.*\})$", re.MULTILINE)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class LoadResult:
    """What wrk saw in one run."""

    requests: int
    seconds: float
    errors: int
    """Connection errors, timeouts and non-2xx answers."""
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    wrk = wrk_path()
    if not wrk:
        return "absent"
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr or "unknown").splitlines()[0]
    return first.split()[1] if first.startswith("wrk ") and len(first.split()) > 1 else first.strip()


def run_wrk(url: str, body_file: Path, content_type: str | None, headers: tuple[tuple[str, str], ...],
            concurrency: int, seconds: float, threads: int = 1) -> LoadResult:  # fmt: skip
    """`wrk -c concurrency` for `seconds` POSTing the file's bytes; its own Lua summary parsed."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    duration = max(1, round(seconds))
    command = [
        wrk, f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s",
        "-s", str(LUA), url, "--", str(body_file), content_type or "-", *(f"{k}: {v}" for k, v in headers),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    match = _RESULT.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(match.group(1))
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return LoadResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=errors,
        p50_ms=raw["p50_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
    )


def in_flight(base_url: str) -> float | None:
    """Requests the server is still working on (its `*requests_in_flight` gauge, this scrape excluded)."""
    status, body = http("GET", f"{base_url}/metrics", timeout=10)
    if status != 200:
        return None
    total, found = 0.0, False
    for line in body.decode(errors="replace").splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).endswith("requests_in_flight"):
            total += float(match.group(3))
            found = True
    return max(0.0, total - 1) if found else None


def wait_idle(base_url: str, timeout: float = 60) -> float:
    """After a wrk run the server may still be computing requests wrk gave up on (a batch of 256x256 images
    takes seconds): wait until it has none left, so that they do not slow the next cell. Seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy = in_flight(base_url)
        if not busy:
            break
        time.sleep(0.05)
    return time.monotonic() - started


# What the server's metrics tell about one graph, Triton-style: rows per ONNX Runtime call, time waiting in the
# batcher's queue per request, time inside ONNX Runtime per call. Matched by name fragment, so that a renamed
# metric (`ae_inference_batch_size` today) still counts; the first family that matches wins.
GRAPH_METRICS = {"rows": ("batch_size", "batch"), "queue": ("queue_duration",), "compute": ("inference_duration",)}


def graph_counters(base_url: str, model: str, graph: str) -> dict[str, tuple[float, float]] | None:
    """{"rows" | "queue" | "compute": (histogram sum, count)} so far for one graph (summed over the other labels,
    warm-up excluded); None when the server has no metrics."""
    status, body = http("GET", f"{base_url}/metrics", timeout=10)
    if status != 200:
        return None
    families: dict[str, list[float]] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels_text, value = match.groups()
        kind = "_sum" if name.endswith("_sum") else "_count" if name.endswith("_count") else None
        if kind is None:
            continue
        labels = dict(_LABEL.findall(labels_text or ""))
        if labels.get("model") != model or labels.get("graph") != graph or labels.get("endpoint") == "warmup":
            continue
        totals = families.setdefault(name[: -len(kind)], [0.0, 0.0])
        totals[0 if kind == "_sum" else 1] += float(value)
    found: dict[str, tuple[float, float]] = {}
    for key, fragments in GRAPH_METRICS.items():
        for fragment in fragments:
            family = next((f for f in families if fragment in f), None)
            if family is not None:
                found[key] = (families[family][0], families[family][1])
                break
    return found


def mean_between(before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None,
                 key: str) -> float | None:  # fmt: skip
    """Mean of one histogram over the observations made between two scrapes."""
    if not before or not after or key not in before or key not in after:
        return None
    calls = after[key][1] - before[key][1]
    return (after[key][0] - before[key][0]) / calls if calls > 0 else None


@dataclass(frozen=True)
class BareResult:
    batch: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rows_per_s(self) -> float:
        return self.batch * self.calls / self.seconds


class BareRuntime:
    """The graphs called in-process with ONNX Runtime: one caller, intra-op threads = the usable CPUs, no
    spinning, optimisation level ALL (the best a single caller gets from the runtime on this machine)."""

    def __init__(self, models_dir: Path, threads: int) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self._sessions: dict[tuple[str, str], object] = {}

    def session(self, model: str, graph: str, threads: int | None = None):  # type: ignore[no-untyped-def]
        """The graph's session with `threads` intra-op threads (default: all the usable CPUs), opened once."""
        threads = self.threads if threads is None else threads
        key = (model, graph) if threads == self.threads else (model, f"{graph}@{threads}")
        if key not in self._sessions:
            self._sessions[key] = self.open(model, graph, threads)
        return self._sessions[key]

    def open(self, model: str, graph: str, threads: int):  # type: ignore[no-untyped-def]
        """A new session of the graph with `threads` intra-op threads, no spinning, optimisation level ALL."""
        import onnxruntime as ort

        card = json.loads((self.models_dir / model / "card.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = self.models_dir / model / card["graphs"][graph]["file"]
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def measure(self, model: str, graph: str, sample: np.ndarray, batch: int, seconds: float) -> BareResult:
        """Call the graph on `batch` rows (the sample's rows repeated) for about `seconds` (at least 5 calls)."""
        session = self.session(model, graph)
        reps = -(-batch // sample.shape[0])
        x = np.ascontiguousarray(np.concatenate([sample] * reps)[:batch])
        feeds = {session.get_inputs()[0].name: x}
        for _ in range(3):
            session.run(None, feeds)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        ms = np.array(times) * 1e3
        return BareResult(batch, len(times), elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))

    def measure_callers(
        self, model: str, graph: str, sample: np.ndarray, batch: int, seconds: float, callers: int
    ) -> BareResult:
        """`callers` threads at once, each with a session of one intra-op thread, calling the graph on `batch` rows
        for about `seconds`: what the runtime gives several concurrent callers (the bound for `callers` workers)."""
        import threading

        sessions = [self.session(model, graph, threads=1)] + [self.open(model, graph, 1) for _ in range(callers - 1)]
        reps = -(-batch // sample.shape[0])
        x = np.ascontiguousarray(np.concatenate([sample] * reps)[:batch])
        feeds = {sessions[0].get_inputs()[0].name: x}
        for session in sessions:
            session.run(None, feeds)
        times: list[list[float]] = [[] for _ in sessions]
        barrier = threading.Barrier(len(sessions) + 1)
        stop = threading.Event()

        def call(index: int) -> None:
            barrier.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                sessions[index].run(None, feeds)
                times[index].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(sessions))]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        ms = np.array([t for per in times for t in per]) * 1e3
        return BareResult(batch, len(ms), elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))
