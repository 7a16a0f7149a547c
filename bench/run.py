"""`python -m bench [--quick]`: the benchmark of issues 6 and 19, start to finish (see bench/README.md).

Starts the servers (ours three ways; the peers MLServer, the tutorial FastAPI app and BentoML, each in its own
virtualenv; the external echo ceiling), checks every request once (and the peers' answers against in-process
ONNX Runtime), warms up, then runs the matrix of
cases x concurrency x variants with wrk for several rounds, the variants of a cell back to back and their order
reversed every other round (the machine drifts), measures the bare runtime at the batch sizes the server
formed, drives the service to N requests for the memory figure, and writes the Markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from bench import report
from bench.cases import Case, build_cases
from bench.load import BareRuntime, graph_counters, mean_between, run_wrk, wait_idle, wrk_path, wrk_version
from bench.plan import (
    BENTOML,
    ECHO,
    FLOOR,
    JSON_ENCODE_CASES,
    MLSERVER,
    MLSERVER_BATCHING,
    NO_BATCHING,
    OURS,
    OWN_SERVERS,
    PARALLEL_BARE_CASES,
    PEER_CASES,
    PEERS,
    SERVER_OF,
    TUTORIAL,
    TWO_WORKERS,
    VARIANTS,
    Cell,
    Results,
    applies,
    path_of,
)
from bench.servers import (
    BENCH,
    BENTOML_REQUIREMENTS,
    REPO,
    TUTORIAL_REQUIREMENTS,
    Server,
    http,
    mlserver_venv,
    mlserver_version,
    package_versions,
    peer_venv,
    start_bentoml,
    start_echo,
    start_floor,
    start_mlserver,
    start_ours,
    start_tutorial,
)


@dataclass
class Config:
    duration: float
    rounds: int
    levels: tuple[int, ...]
    warmup: float
    bare_seconds: float
    memory_requests: int
    cases: list[str] | None
    variants: list[str]
    out: Path | None
    models_dir: Path
    mode: str
    work_dir: Path | None = None


@dataclass
class Run:
    """Everything measured, plus the context the report states."""

    config: Config
    command: str
    started: datetime
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    results: Results = field(default_factory=Results)
    memory: list[tuple[str, int, int]] = field(default_factory=list)
    memory_end: dict[str, tuple[int, int]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    load: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def parse_args(argv: list[str] | None) -> Config:
    about = "Benchmark the service against its ceilings and peers (issues 6 and 19; see bench/README.md)."
    p = argparse.ArgumentParser(prog="python -m bench", description=about)
    p.add_argument("--quick", action="store_true", help="1 round of 1 s cells, 20,000 requests for memory (~5 min)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 4; quick 1)")
    p.add_argument("--rounds", type=int, help="rounds over the whole matrix (default 2; quick 1)")
    p.add_argument("--concurrency", default="1,8,32", help="comma list of connection counts (default 1,8,32)")
    p.add_argument("--cases", help="comma list of case names (default: all)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--memory-requests", type=int, help="requests before the last RSS reading (default 100000)")
    p.add_argument("--bare-seconds", type=float, help="seconds per bare-runtime measurement (0 skips it)")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    p.add_argument("--out", type=Path, help="report file (default bench/RESULTS.md; '-' prints only)")
    p.add_argument("--work-dir", type=Path, help="payloads and server logs (default bench/.runs/<date>)")
    args = p.parse_args(argv)
    quick = args.quick
    duration = args.duration if args.duration is not None else (1.0 if quick else 4.0)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    out = None if args.out == Path("-") else (args.out or BENCH / "RESULTS.md")
    return Config(
        duration=duration,
        rounds=args.rounds or (1 if quick else 2),
        levels=tuple(sorted({int(c) for c in args.concurrency.split(",")})),
        warmup=0.5 if quick else 1.0,
        bare_seconds=args.bare_seconds if args.bare_seconds is not None else (0.5 if quick else 1.5),
        memory_requests=args.memory_requests if args.memory_requests is not None else (20_000 if quick else 100_000),
        cases=[c.strip() for c in args.cases.split(",")] if args.cases else None,
        variants=variants,
        out=out,
        models_dir=args.models_dir.resolve(),
        mode="quick" if quick else "full",
        work_dir=args.work_dir,
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busiest_processes(count: int = 4) -> str:
    """The processes using the most CPU as the run starts (what else is on the machine)."""
    import subprocess

    out = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, check=False)
    rows = []
    for line in out.stdout.splitlines()[1:]:
        cpu, _, args = line.strip().partition(" ")
        if "ps -eo" in args or float(cpu or 0) < 5:
            continue
        rows.append(f"{cpu} % `{args.strip()[:70]}`")
        if len(rows) == count:
            break
    return "; ".join(rows) or "none above 5 %"


def machine_info() -> dict[str, str]:
    from app.settings import usable_cpus

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line), "0")
    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} online, {usable_cpus()} usable by this process (affinity / cgroup quota)",
        "memory": f"{int(mem) / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    import subprocess
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "onnxruntime", "numpy", "orjson",
                 "pydantic", "pillow"):  # fmt: skip
        try:
            out[name] = version(name)
        except Exception:
            out[name] = "absent"
    out["wrk"] = wrk_version()
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "app", "bench"],
                           capture_output=True, text=True)  # fmt: skip
    out["git"] = git.stdout.strip() + (" (app/ or bench/ modified)" if dirty.stdout.strip() else "")
    return out


def service_defaults() -> dict[str, str]:
    """The batching and worker defaults of the service under test, as its settings resolve them here."""
    from app.settings import Settings

    settings = Settings()
    names = ("workers", "batching", "batch_max_rows", "batch_max_delay_ms", "queue_max_requests",
             "inference_concurrency", "intra_op_threads")  # fmt: skip
    values = {n: str(getattr(settings, n)) for n in names if hasattr(settings, n)}
    resolve = getattr(settings, "ort_intra_op_threads", None)
    if resolve is not None:
        values["intra_op_threads (resolved, 1 worker)"] = str(Settings(workers=1).ort_intra_op_threads())
    return values


def start_own(run: Run, run_dir: Path, wanted: set[str]) -> None:
    """Ours (always: the reference every other variant is compared with), then its other configurations."""
    from app.settings import Settings

    log("starting ours (1 worker)")
    run.servers[OURS] = start_ours(OURS, "python -m app --workers 1 (production settings)", run_dir, 1, {})
    if NO_BATCHING in wanted:
        if "batching" not in Settings.model_fields:
            run.skipped[NO_BATCHING] = "this build of the service has no `batching` setting (AE_BATCHING)"
        else:
            log("starting ours with AE_BATCHING=0")
            env = {"AE_BATCHING": "0"}
            run.servers[NO_BATCHING] = start_ours(NO_BATCHING, "AE_BATCHING=0, 1 worker", run_dir, 1, env)
    if TWO_WORKERS in wanted:
        log("starting ours with 2 workers")
        run.servers[TWO_WORKERS] = start_ours(TWO_WORKERS, "python -m app --workers 2", run_dir, 2, {})


def encoder_file(models_dir: Path) -> tuple[Path, str]:
    """The dense encoder every peer serves: (ONNX file, model version)."""
    card = orjson.loads((models_dir / "dense" / "card.json").read_bytes())
    return models_dir / "dense" / card["graphs"]["encoder"]["file"], str(card["version"])


def peer_threads() -> int:
    """The ORT intra-op thread count our service resolves with 1 worker: what every peer's session gets."""
    return int(service_defaults().get("intra_op_threads (resolved, 1 worker)", "1"))


def start_mlservers(run: Run, run_dir: Path, peers: list[str]) -> None:
    """MLServer (default settings) and MLServer with adaptive batching, from `bench/.venv-mlserver`."""
    try:
        python = mlserver_venv(BENCH / ".venv-mlserver")
    except Exception as exc:  # the peer is optional: report why it is missing, measure the rest
        for name in peers:
            run.skipped[name] = f"MLServer could not be installed: {str(exc)[:400]}"
        return
    run.versions["mlserver (its venv: mlserver, onnxruntime)"] = mlserver_version(python)
    model_file, version = encoder_file(run.config.models_dir)
    defaults = service_defaults()
    threads = peer_threads()
    # The peer batches like ours: the same maximum batch and delay, except that MLServer's adaptive batching
    # needs a positive delay to merge anything (ours merges what queues while ONNX Runtime is busy): 1 ms then.
    delay_ms = float(defaults.get("batch_max_delay_ms", "1")) or 1.0
    batching = (int(defaults.get("batch_max_rows", "64")), delay_ms / 1000)
    for name in peers:
        try:
            log(f"starting {name}")
            server = start_mlserver(python, run_dir, "dense.encoder", model_file, version, threads, name,
                                    batching if name == MLSERVER_BATCHING else None)  # fmt: skip
            server.description += f"; parallel_workers=1 (its default), ORT intra-op threads {threads}, no spinning"
            run.servers[name] = server
        except Exception as exc:
            run.skipped[name] = f"MLServer did not start: {str(exc)[:400]}"
            log(run.skipped[name])


@dataclass(frozen=True)
class VenvPeer:
    """A peer that runs from its own virtualenv (`bench/<venv>`, created from `requirements` on first use)."""

    venv: str
    requirements: Path
    packages: tuple[str, ...]
    """Whose versions the report states."""
    start: Callable[[Path, Path, Path, int], Server]
    """(its python, run folder, ONNX file, ORT intra-op threads) -> the running server."""


VENV_PEERS = {
    TUTORIAL: VenvPeer(".venv-tutorial", TUTORIAL_REQUIREMENTS,
                       ("fastapi", "pydantic", "uvicorn", "httptools", "uvloop", "onnxruntime"), start_tutorial),
    BENTOML: VenvPeer(".venv-bentoml", BENTOML_REQUIREMENTS,
                      ("bentoml", "uvicorn", "httptools", "uvloop", "onnxruntime"), start_bentoml),
}  # fmt: skip


def start_venv_peer(run: Run, run_dir: Path, name: str) -> None:
    """The tutorial app or BentoML, each from its own virtualenv (created on first use); skipped if it fails."""
    peer = VENV_PEERS[name]
    try:
        python = peer_venv(BENCH / peer.venv, peer.requirements)
    except Exception as exc:
        run.skipped[name] = f"{name} could not be installed: {str(exc)[:400]}"
        return
    run.versions[f"{name} (its venv)"] = package_versions(python, peer.packages)
    try:
        log(f"starting {name}")
        run.servers[name] = peer.start(python, run_dir, encoder_file(run.config.models_dir)[0], peer_threads())
    except Exception as exc:
        run.skipped[name] = f"{name} did not start: {str(exc)[:400]}"
        log(run.skipped[name])


def start_servers(run: Run, run_dir: Path, cases: list[Case]) -> None:
    """Each server in turn (start-up times measured on an otherwise idle benchmark)."""
    wanted = {SERVER_OF[v] for v in run.config.variants}
    start_own(run, run_dir, wanted)
    if ECHO in wanted and any(c.ceilings for c in cases):
        log("starting the echo ceiling")
        try:
            run.servers[ECHO] = start_echo(run_dir)
        except Exception as exc:
            run.skipped[ECHO] = f"the echo did not start: {str(exc)[:400]}"
    if FLOOR in wanted and any(applies(FLOOR, c, max(run.config.levels), run.config.levels) for c in cases):
        log("starting the floor")
        try:
            run.servers[FLOOR] = start_floor(run_dir, encoder_file(run.config.models_dir)[0], peer_threads())
        except Exception as exc:
            run.skipped[FLOOR] = f"the floor did not start: {str(exc)[:400]}"
    mlservers = [v for v in (MLSERVER, MLSERVER_BATCHING) if v in wanted]
    if mlservers and any(c.peer for c in cases):
        start_mlservers(run, run_dir, mlservers)
    for name in VENV_PEERS:
        if name in wanted and any(c.name in PEER_CASES[name] for c in cases):
            start_venv_peer(run, run_dir, name)


def url_for(run: Run, variant: str, case: Case) -> str:
    return run.servers[SERVER_OF[variant]].base_url + path_of(variant, case)


CHECKED_CASES = ("encode-json-1", "v2-json-1")
"""The 1-row answers compared with in-process ONNX Runtime, for ours and every peer."""
TOLERANCE = 1e-5


def answer_latent(case: Case, body: bytes) -> np.ndarray:
    """The latent in an answer: `{"latent": [[...]]}` (/v1 encode, the tutorial app, BentoML) or V2 JSON."""
    doc = orjson.loads(body)
    data = doc["latent"] if case.name in JSON_ENCODE_CASES else doc["outputs"][0]["data"]
    return np.asarray(data, dtype=np.float32).ravel()


def compare_latents(run: Run, case: Case, answers: dict[str, bytes], reference: BareRuntime) -> None:
    """Each variant's answer to `case` against in-process ONNX Runtime on the same rows (within 1e-5)."""
    session = reference.session(case.model, case.graph)
    want = session.run(None, {session.get_inputs()[0].name: case.sample})[0].ravel()
    for variant, body in answers.items():
        try:
            got = answer_latent(case, body)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            run.checks.append(f"`{variant}` {case.name}: **answer not understood** ({exc!r}): {body[:120]!r}")
            continue
        diff = float(np.max(np.abs(got - want))) if got.size == want.size else float("inf")
        verdict = f"within {TOLERANCE:g}" if diff <= TOLERANCE else f"**over {TOLERANCE:g}**"
        run.checks.append(f"`{variant}` {case.name} answer vs in-process ONNX Runtime on the same input: "
                          f"max |diff| {diff:.2e} ({verdict})")  # fmt: skip


def check_requests(run: Run, cases: list[Case], reference: BareRuntime) -> dict[tuple[str, str], str]:
    """One request per (variant, case) before measuring: anything but 200 is reported and left out; the
    1-row answers of ours and the peers are compared with in-process ONNX Runtime."""
    broken: dict[tuple[str, str], str] = {}
    answers: dict[str, dict[str, bytes]] = {}
    for case in cases:
        for variant in run.config.variants:
            if SERVER_OF[variant] not in run.servers or not applies(variant, case, max(run.config.levels),
                                                                     run.config.levels):  # fmt: skip
                continue
            headers = dict(case.headers)
            if case.content_type:
                headers["Content-Type"] = case.content_type
            status, body = http("POST", url_for(run, variant, case), case.body, headers, timeout=30)
            if status != 200:
                broken[(variant, case.name)] = f"HTTP {status}: {body[:200].decode(errors='replace')}"
                log(f"skipping {variant} x {case.name}: {broken[(variant, case.name)]}")
            elif case.name in CHECKED_CASES and (variant in (OURS, FLOOR) or variant in PEERS):
                answers.setdefault(case.name, {})[variant] = body
    for case in cases:
        if case.name in answers:
            compare_latents(run, case, answers[case.name], reference)
    return broken


def measure_cell(run: Run, variant: str, case: Case, concurrency: int, seconds: float, run_dir: Path,
                 round_: int | None) -> Cell:  # fmt: skip
    server = run.servers[SERVER_OF[variant]]
    watch = variant in (OURS, NO_BATCHING)
    before = graph_counters(server.base_url, case.model, case.graph) if watch else None
    if round_ is not None:  # measured: long enough to complete requests (a warm-up only needs to send them)
        seconds = max(seconds, case.min_seconds)
    result = run_wrk(url_for(run, variant, case), case.body_file(run_dir), case.content_type, case.headers,
                     concurrency, seconds)  # fmt: skip
    server.requests_served += result.requests
    if SERVER_OF[variant] in OWN_SERVERS:
        wait_idle(server.base_url)
    else:
        time.sleep(0.5)  # a peer or the echo: no in-flight gauge, a pause for what wrk left behind
    after = graph_counters(server.base_url, case.model, case.graph) if watch else None
    queue, compute = mean_between(before, after, "queue"), mean_between(before, after, "compute")
    cell = Cell(round_ or 0, variant, case.name, concurrency, result, case.rows,
                batch_rows=mean_between(before, after, "rows"),
                queue_ms=None if queue is None else queue * 1e3,
                compute_ms=None if compute is None else compute * 1e3)  # fmt: skip
    batch_rows = cell.batch_rows
    if round_ is not None:
        run.results.cells.append(cell)
        formed = f", {batch_rows:.1f} rows/call" if batch_rows else ""
        if cell.queue_ms is not None and cell.compute_ms is not None:
            formed += f" (queue {cell.queue_ms:.2f} ms, ORT {cell.compute_ms:.2f} ms/call)"
        errors = f", {result.errors} ERRORS" if result.errors else ""
        log(f"r{round_} {case.name:18} c={concurrency:<3} {variant:12} {result.rps:8.0f} req/s  "
            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms{formed}{errors}")  # fmt: skip
    return cell


def record_memory(run: Run, label: str) -> None:
    server = run.servers.get(OURS)
    if server:
        rss, hwm = server.memory_kib()
        run.memory.append((label, rss, hwm))
        log(f"memory ({label}): RSS {rss / 1024:.0f} MiB, peak {hwm / 1024:.0f} MiB")


def bare_round(run: Run, cases: list[Case], bare: BareRuntime, round_: int) -> None:
    """The bare runtime at each case's request size and at the batch sizes the server formed in this round."""
    if run.config.bare_seconds <= 0:
        return
    done: dict[tuple[str, str, tuple[int, ...], int], object] = {}
    for case in cases:
        batches = {case.rows}
        for cell in run.results.cells:
            if cell.round == round_ and cell.case == case.name and cell.variant == OURS and cell.batch_rows:
                batches.add(max(1, round(cell.batch_rows)))
        for batch in sorted(batches):
            key = (case.model, case.graph, tuple(case.sample.shape[1:]), batch)
            if key not in done:
                done[key] = bare.measure(case.model, case.graph, case.sample, batch, run.config.bare_seconds)
            run.results.bare[(case.name, batch)].append(done[key])  # type: ignore[arg-type]
        if case.name in PARALLEL_BARE_CASES and bare.threads > 1:
            both = bare.measure_callers(
                case.model, case.graph, case.sample, case.rows, run.config.bare_seconds, callers=bare.threads
            )
            run.results.bare_callers[(case.name, case.rows)].append(both)


def memory_top_up(run: Run, cases: list[Case], run_dir: Path, broken: dict[tuple[str, str], str]) -> None:
    """Drive `ours` until it has answered `memory_requests` requests in all (bounded to 5 minutes)."""
    server = run.servers.get(OURS)
    usable = [c for c in cases if (OURS, c.name) not in broken]
    if not server or not usable or run.config.memory_requests <= 0:
        return
    deadline = time.monotonic() + 300
    i = 0
    while server.requests_served < run.config.memory_requests and time.monotonic() < deadline:
        measure_cell(run, OURS, usable[i % len(usable)], max(run.config.levels), 5, run_dir, None)
        i += 1
    record_memory(run, f"after {server.requests_served:,} requests")


def benchmark(run: Run) -> None:
    config = run.config
    run_dir = config.work_dir or BENCH / ".runs" / run.started.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in build_cases(config.models_dir) if config.cases is None or c.name in config.cases]
    if not cases:
        raise SystemExit(f"no such case: {config.cases}")
    bare = BareRuntime(config.models_dir, threads=int(run.machine["usable_cpus"]))
    busy0, total0 = cpu_busy_jiffies()
    try:
        start_servers(run, run_dir, cases)
        record_memory(run, "ready, every model loaded, no request yet")
        broken = check_requests(run, cases, bare)
        run.skipped.update({f"{v} x {c}": reason for (v, c), reason in broken.items()})

        def cells_of(case: Case, level: int) -> list[str]:
            return [v for v in config.variants if SERVER_OF[v] in run.servers and (v, case.name) not in broken
                    and applies(v, case, level, config.levels)]  # fmt: skip

        log("warming up every variant and case")
        for case in cases:
            # At the top concurrency: the biggest batches, hence ONNX Runtime's arena, form here, not mid-run.
            for variant in dict.fromkeys(v for level in config.levels for v in cells_of(case, level)):
                measure_cell(run, variant, case, max(config.levels), config.warmup, run_dir, None)
        record_memory(run, "after warm-up")
        for round_ in range(1, config.rounds + 1):
            for case in cases:
                for level in config.levels:
                    variants = cells_of(case, level)
                    for variant in variants if round_ % 2 else variants[::-1]:
                        measure_cell(run, variant, case, level, config.duration, run_dir, round_)
            bare_round(run, cases, bare, round_)
            record_memory(run, f"after round {round_}")
        memory_top_up(run, cases, run_dir, broken)
    finally:
        for name, server in run.servers.items():
            run.memory_end[name] = server.memory_kib()
            code = server.stop()
            # Uvicorn re-raises the SIGTERM it handled once shut down: a clean exit for the peers run by it.
            if code != 0 and (name in OWN_SERVERS or code != -signal.SIGTERM):
                run.checks.append(f"`{name}` exited with status {code} on SIGTERM")
    if config.work_dir is None:  # server logs (a line per request) and payloads: kept only when the run failed
        shutil.rmtree(run_dir, ignore_errors=True)
    busy1, total1 = cpu_busy_jiffies()
    times = os.times()
    ours_seconds = times.user + times.system + times.children_user + times.children_system
    clock = os.sysconf("SC_CLK_TCK")
    machine_busy = (busy1 - busy0) / clock
    elapsed = (total1 - total0) / clock  # CPU-seconds available across all cores
    others = max(0.0, machine_busy - ours_seconds)
    run.load["others_cpu"] = f"{others:.0f} CPU-s of {elapsed:.0f} available ({100 * others / max(elapsed, 1):.0f} %)"
    run.load["others_share"] = f"{others / max(elapsed, 1):.3f}"


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if wrk_path() is None:
        print("wrk is not installed: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    if not (config.models_dir / "dense" / "card.json").exists():
        print(f"no models in {config.models_dir}", file=sys.stderr)
        return 2
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    args = sys.argv[1:] if argv is None else argv
    command = f"{shown} -m bench " + " ".join(shlex.quote(a) for a in args)
    run = Run(config=config, command=command.strip(), started=datetime.now(timezone.utc))
    run.machine = machine_info()
    from app.settings import usable_cpus

    run.machine["usable_cpus"] = str(usable_cpus())
    run.versions = versions()
    run.load["loadavg_start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    busy0, total0 = cpu_busy_jiffies()
    time.sleep(1.0)
    busy1, total1 = cpu_busy_jiffies()
    run.load["busy_before"] = f"{100 * (busy1 - busy0) / max(1, total1 - total0):.0f} %"
    run.load["defaults"] = ", ".join(f"{k}={v}" for k, v in service_defaults().items())
    run.load["top"] = busiest_processes()
    started = time.monotonic()
    benchmark(run)
    run.seconds = time.monotonic() - started
    run.load["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report.render(run)
    print(text, end="")
    if config.out is not None:
        config.out.write_text(text)
        log(f"report written to {config.out}")
    return 0
