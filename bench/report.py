"""The Markdown report of a run: context (command, date, machine, versions, load), the targets of issues 6 and 19
with the measured ratios, ours against each peer and the echo ceiling, every cell, the bare runtime, memory and
start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.cases import build_cases
from bench.plan import (
    ECHO,
    FLOOR,
    MLSERVER,
    MLSERVER_BATCHING,
    NO_BATCHING,
    NOOP_PARSE,
    NOOP_RAW,
    NPY_ENCODE_CASES,
    OURS,
    PEERS,
    TWO_WORKERS,
    VARIANTS,
    median_of,
)

if TYPE_CHECKING:
    from bench.run import Run

SHARED_SHARE = 0.05
ECHO_GOAL = 0.30
"""Issue 19: ours, 1-row JSON encode at the top concurrency, >= 0.30x the external echo's requests/s."""


def _f(value: float | None, digits: int = 0, missing: str = "") -> str:
    if value is None:
        return missing
    return f"{value:,.{digits}f}"


def _mid(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _nearest(levels: tuple[int, ...], want: int) -> int:
    return min(levels, key=lambda c: (abs(c - want), -c))


def verdict(value: float | None, ok: bool) -> str:
    return "not measured" if value is None else ("met" if ok else "**missed**")


def echo_target(run: Run) -> tuple[str, str, str, str]:
    """Issue 19's ceiling: ours / the external bare-uvicorn echo, 1-row JSON encode at the top concurrency."""
    res, top = run.results, max(run.config.levels)
    enc = ("encode-json-1", top)
    r = res.ratio((OURS, *enc), (ECHO, *enc), "rps")
    ours, echo = res.get(OURS, *enc), res.get(ECHO, *enc)
    measured = _x(r)
    if r is not None and ours and echo:
        measured += f" ({_f(median_of(ours, 'rps'))} vs {_f(median_of(echo, 'rps'))} req/s)"
    target = f"/v1 encode 1-row JSON, c={top}, 1 worker, production settings: ours / `{ECHO}` requests/s"
    return target, measured, f">= {ECHO_GOAL:.2f}x", verdict(r, r is not None and r >= ECHO_GOAL)


WORKERS_GOAL = 0.5


def workers_target(run: Run) -> tuple[str, str, str, str]:
    """Issue 19: `.npy` encode rows/s with workers = usable CPUs (`2-workers`) at its best batch against bare ONNX
    Runtime's best on the same batches: one caller on every CPU, or one one-thread caller per CPU, whichever is
    faster."""
    res, top = run.results, max(run.config.levels)
    batches = " / ".join(str(rows) for rows in NPY_ENCODE_CASES.values())
    target = (
        f"`.npy` encode ({batches} rows), c={top}: `{TWO_WORKERS}` / bare ORT's best rows/s "
        "(1 caller x all CPUs or 1 per CPU), each at its best batch"
    )
    ours: list[tuple[float, str]] = []
    bare: list[tuple[float, str]] = []
    for case, rows in NPY_ENCODE_CASES.items():
        cells = res.get(TWO_WORKERS, case, top)
        if cells:
            ours.append((median_of(cells, "rows_per_s"), case))
        for b in (res.bare_median(case, rows), res.bare_median(case, rows, callers=True)):
            if b is not None:
                bare.append((b.rows_per_s, case))
    if not ours or not bare:
        return target, "n/a", f">= {WORKERS_GOAL:.2f}x", "not measured"
    (best_ours, at_ours), (best_bare, at_bare) = max(ours), max(bare)
    r = best_ours / best_bare
    measured = f"{_x(r)} ({_f(best_ours)} rows/s on `{at_ours}` vs {_f(best_bare)} on `{at_bare}`)"
    return target, measured, f">= {WORKERS_GOAL:.2f}x", verdict(r, r >= WORKERS_GOAL)


def targets(run: Run) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, verdict) rows."""
    res = run.results
    top = max(run.config.levels)
    rows: list[tuple[str, str, str, str]] = [echo_target(run)]
    enc = ("encode-json-1", top)
    # Where the echo target sits: the least one Python process does for this request (bench/peers/floor.py).
    for a, b in ((FLOOR, ECHO), (OURS, FLOOR)):
        r = res.ratio((a, *enc), (b, *enc), "rps")
        if r is not None:
            rows.append((f"/v1 encode 1-row JSON, c={top}: `{a}` / `{b}` requests/s", _x(r), "reported", "-"))
    # Issue 6's ceilings, on our own stack: the echo above replaced them as the target (issue 19).
    for ceiling, was in ((NOOP_RAW, 0.6), (NOOP_PARSE, 0.9)):
        r = res.ratio((OURS, *enc), (ceiling, *enc), "rps")
        rows.append((f"/v1 encode 1-row JSON, c={top}: ours / `{ceiling}` requests/s (our own no-op route)", _x(r),
                     f"reported (issue 6 asked >= {was:.2f}x)", "-"))  # fmt: skip
    v2 = ("v2-json-1", top)
    for peer in (MLSERVER, MLSERVER_BATCHING):
        if peer not in run.config.variants:
            continue
        r = res.ratio((OURS, *v2), (peer, *v2), "rps")
        rows.append((f"V2 JSON 1 row, c={top}: ours / `{peer}` requests/s", _x(r), ">= 2x",
                     verdict(r, r is not None and r >= 2)))  # fmt: skip
        ours_p99, peer_p99 = res.get(OURS, *v2), res.get(peer, *v2)
        if ours_p99 and peer_p99:
            a, b = median_of(ours_p99, "p99_ms"), median_of(peer_p99, "p99_ms")
            rows.append((f"V2 JSON 1 row, c={top}: p99 ours vs `{peer}`", f"{a:.1f} ms vs {b:.1f} ms", "lower",
                         verdict(a, a < b)))  # fmt: skip
        else:
            rows.append((f"V2 JSON 1 row, c={top}: p99 ours vs `{peer}`", "n/a", "lower", "not measured"))
        # MLServer's default runs inference in a second process (parallel_workers=1): two processes, like ours
        # with 2 workers.
        r = res.ratio((TWO_WORKERS, *v2), (peer, *v2), "rps")
        if r is not None:
            rows.append((f"V2 JSON 1 row, c={top}: `2-workers` / `{peer}` requests/s (both 2 processes)", _x(r),
                         "reported", "-"))  # fmt: skip
    r = res.ratio((OURS, "encode-npy-64", top), (OURS, "encode-json-64", top), "rows_per_s")
    rows.append(
        (f"/v1 encode 64 rows, c={top}: .npy / JSON rows/s", _x(r), ">= 5x", verdict(r, r is not None and r >= 5))
    )
    eight = _nearest(run.config.levels, 8)
    den = res.get(OURS, "denoise-png-256", eight)
    formed = [c.batch_rows for c in den if c.batch_rows]
    if den and formed:
        batch = max(1, round(sorted(formed)[len(formed) // 2]))
        bare = res.bare_median("denoise-png-256", batch)
        ours_rate = median_of(den, "rows_per_s")
        r = ours_rate / bare.rows_per_s if bare else None
        measured = (f"{_x(r)} ({ours_rate:.1f} vs {bare.rows_per_s:.1f} images/s at batch {batch})" if bare
                    else "n/a (no bare measurement)")  # fmt: skip
        rows.append((f"denoise 256x256 PNG, c={eight}: ours / bare ORT images/s at the batch formed", measured,
                     ">= 0.80x", verdict(r, r is not None and r >= 0.8)))  # fmt: skip
    else:
        rows.append((f"denoise 256x256 PNG, c={eight}: ours / bare ORT images/s", "n/a", ">= 0.80x", "not measured"))
    for case in ("encode-json-1", "v2-json-1", "reconstruct-json-1", "denoise-png-28"):
        r = res.ratio((OURS, case, top), (NO_BATCHING, case, top), "rps")
        if r is not None or case == "encode-json-1":
            rows.append((f"{case}, c={top}: batching on / off requests/s", _x(r), "a clear win (>= 1.2x)",
                         verdict(r, r is not None and r >= 1.2)))  # fmt: skip
    rows.append(workers_target(run))
    for case in ("encode-json-1", "v2-json-1", *NPY_ENCODE_CASES, "denoise-png-28"):
        r = res.ratio((TWO_WORKERS, case, top), (OURS, case, top), "rps")
        if r is not None:
            rows.append((f"{case}, c={top}: 2 workers / 1 worker requests/s", _x(r), "reported", "-"))
    return rows


def peer_ratios(run: Run) -> list[str]:
    """Ours / each peer (and / the echo ceiling) in requests/s, per case and concurrency: the median over rounds
    of the ratio within a round."""
    res, levels = run.results, run.config.levels
    others = [v for v in (ECHO, FLOOR, *PEERS) if any(c.variant == v for c in res.cells)]
    if not others:
        return []
    lines = ["", "## Ours against the peers and the echo ceiling", "",
             "ours / other, requests/s (above 1: ours answers more; `echo` is the ceiling: a bare ASGI app on uvicorn "
             "that reads the body and answers a fixed JSON, so ours stays below 1).", "",
             "| other | case | " + " | ".join(f"c={c}" for c in levels) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in levels) + " |"]  # fmt: skip
    for other in others:
        for case in dict.fromkeys(c.case for c in res.cells if c.variant == other):
            ratios = [res.ratio((OURS, case, c), (other, case, c), "rps") for c in levels]
            lines.append(f"| {other} | {case} | " + " | ".join("" if r is None else _x(r) for r in ratios) + " |")
    return lines


def _context(run: Run) -> list[str]:
    c = run.config
    share = float(run.load.get("others_share", "0"))
    lines = [
        "# Benchmark results",
        "",
        f"- **Command**: `{run.command}` (from the repository root, with `.venv/bin/python`)",
        f"- **Date**: {run.started:%Y-%m-%d %H:%M} UTC; the run took {run.seconds / 60:.1f} min ({c.mode} mode: "
        f"{c.rounds} round(s), {c.duration:g} s per wrk run, concurrency {', '.join(map(str, c.levels))})",
        f"- **Machine**: {run.machine['cpu']}; {run.machine['cores']}; {run.machine['memory']} RAM; "
        f"{run.machine['os']}",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in run.versions.items()),
        f"- **Service defaults** (as resolved here): {run.load.get('defaults', 'n/a')}",
        f"- **Load**: before the run the machine was {run.load.get('busy_before', '?')} busy (load average "
        f"{run.load.get('loadavg_start', '?')}, at the end {run.load.get('loadavg_end', '?')}); during the run "
        f"processes other than the benchmark used {run.load.get('others_cpu', '?')}. Busiest processes at the "
        f"start (lifetime average CPU): {run.load.get('top', '?')}.",
    ]
    if share > SHARED_SHARE:
        lines += [
            "",
            "> **Shared machine**: other processes were busy during this run, so absolute numbers are low and noisy.",
            "> The ratios (variants interleaved, see below) hold up better; re-run the command above on a quiet "
            "machine for the record.",
        ]
    lines += [
        "",
        "How it was measured: every server runs for the whole benchmark (`ours` = `python -m app --workers 1` with "
        "production settings plus `AE_BENCH_ENDPOINTS=1`; `no-batching` = the same with `AE_BATCHING=0`; "
        "`2-workers` = `--workers 2`; `mlserver` = Seldon MLServer with `bench/mlserver_runtime.py` over the same "
        "ONNX file), each on 127.0.0.1, idle when not measured. wrk (1 thread, `-c` connections, a fixed POST body "
        "from `bench/post.lua`) drives one variant at a time; the variants of a cell run back to back and in "
        "reverse order every other round, so the machine's drift hits them alike. Figures are medians over the "
        "rounds; ratios are computed within each round, then the median is taken. `rows/ORT call` is the mean "
        "batch the server formed for the graph, `queue ms` the mean wait of a request in the batcher's queue and "
        "`ORT ms/call` the mean time inside ONNX Runtime per call (from the server's histograms, Triton-style). "
        "Latencies are wrk's (request sent to response read), in milliseconds. `mlserver-batching` = MLServer "
        "with its adaptive batching at our maximum batch and delay (1 ms if ours is 0: MLServer merges nothing "
        "without a delay). `tutorial` = the FastAPI + pydantic + ONNX Runtime app of the blog posts "
        "(`bench/peers/tutorial_app.py`, uvicorn defaults) and `bentoml` = a minimal BentoML 1.4 service "
        "(`bench/peers/bentoml_service.py`, `bentoml serve`, 1 worker), each in its own virtualenv, on the same ONNX "
        'file and the same `{"inputs": [[...]]}` body as `/v1/encode` (the tutorial also takes V2 JSON); every '
        "peer's ORT session has our resolved thread count, no spinning. `echo` = the external ceiling: "
        "`bench/peers/echo.py`, a bare ASGI app that reads the body and answers a fixed JSON, under uvicorn with "
        "httptools and uvloop, no access log, 1 worker. `floor` = the least one Python process can do for the "
        "1-row JSON encode with a JSON log line and metrics (`bench/peers/floor.py`: orjson, numpy, ONNX Runtime "
        "called inline on the event loop, prometheus_client, under the echo's uvicorn): where the echo target sits.",
    ]
    return lines


def summary(run: Run, titles: dict[str, tuple[str, str, str]]) -> list[str]:
    """`ours` at a glance: requests/s at every concurrency; rows/s, latency and the share of the bare runtime
    (at the batch size the server formed) at the top one."""
    res = run.results
    levels, top = run.config.levels, max(run.config.levels)
    lines = ["", "## Summary (`ours`, 1 worker, default settings)", "",
             "| case | " + " | ".join(f"req/s c={c}" for c in levels) + f" | rows/s c={top} | p50 / p99 ms c={top} "
             f"| share of bare ORT rows/s c={top} |",
             "| --- | " + " | ".join("---:" for _ in levels) + " | ---: | ---: | ---: |"]  # fmt: skip
    for case, (title, _, _) in titles.items():
        if not any(res.get(OURS, case, c) for c in levels):
            continue
        rates = [_f(median_of(cells, "rps")) if (cells := res.get(OURS, case, c)) else "" for c in levels]
        cells = res.get(OURS, case, top)
        rows = _f(median_of(cells, "rows_per_s")) if cells else ""
        lat = f"{median_of(cells, 'p50_ms'):.1f} / {median_of(cells, 'p99_ms'):.1f}" if cells else ""
        share = ""
        formed = _mid([c.batch_rows for c in cells if c.batch_rows])
        bare = res.bare_median(case, max(1, round(formed))) if formed else None
        if cells and bare and bare.rows_per_s > 0:
            share = f"{100 * median_of(cells, 'rows_per_s') / bare.rows_per_s:.1f} % (batch {bare.batch})"
        lines.append(f"| {title} | " + " | ".join(rates) + f" | {rows} | {lat} | {share} |")
    return lines


def render(run: Run) -> str:
    res = run.results
    lines = _context(run)
    lines += ["", "## Targets (issues 6 and 19)", "", "| target | measured | goal | verdict |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(run)]
    titles = {c.name: (c.title, c.model, c.graph) for c in build_cases(run.config.models_dir)}
    lines += summary(run, titles)
    lines += peer_ratios(run)
    lines += ["", "## Every cell", ""]
    for case in dict.fromkeys(c.case for c in res.cells):
        title, model, graph = titles.get(case, (case, "", ""))
        lines += [f"### {title} (`{case}`, graph `{model}.{graph}`)", "",
                  "| variant | conc. | req/s | rows/s | p50 ms | p99 ms | rows/ORT call | queue ms | ORT ms/call "
                  "| rows/s vs ours | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for level in run.config.levels:
            for variant in VARIANTS:
                cells = res.get(variant, case, level)
                if not cells:
                    continue
                formed = [c.batch_rows for c in cells if c.batch_rows]
                queue = [c.queue_ms for c in cells if c.queue_ms is not None]
                compute = [c.compute_ms for c in cells if c.compute_ms is not None]
                vs = "" if variant == OURS else _x(res.ratio((variant, case, level), (OURS, case, level)))
                errors = sum(c.result.errors for c in cells)
                lines.append(
                    f"| {variant} | {level} | {_f(median_of(cells, 'rps'))} | {_f(median_of(cells, 'rows_per_s'))} "
                    f"| {median_of(cells, 'p50_ms'):.2f} | {median_of(cells, 'p99_ms'):.2f} "
                    f"| {_f(_mid(formed), 1)} | {_f(_mid(queue), 2)} | {_f(_mid(compute), 2)} | {vs} | {errors or ''} |"
                )
        lines.append("")
    if res.bare:
        lines += ["## Bare ONNX Runtime, in-process", "",
                  f"One caller, `intra_op_num_threads={run.machine.get('usable_cpus')}` (the usable CPUs), sequential, "
                  "no spinning, optimisation ALL; the same input rows as the case, repeated to the batch size (the "
                  "case's own rows, and each batch the server formed). Median over rounds.", "",
                  "| case | graph | batch | calls/s | rows/s | p50 ms/call | p99 ms/call |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for case, batch in sorted(res.bare, key=lambda k: (list(titles).index(k[0]) if k[0] in titles else 99, k[1])):
            b = res.bare_median(case, batch)
            if b is None:
                continue
            _, model, graph = titles.get(case, (case, "?", "?"))
            lines.append(f"| {case} | {model}.{graph} | {batch} | {_f(b.calls / b.seconds)} | {_f(b.rows_per_s)} "
                         f"| {b.p50_ms:.3f} | {b.p99_ms:.3f} |")  # fmt: skip
        lines.append("")
    header = "| server | start-up to ready | RSS at the end (all processes) | peak RSS |"
    lines += ["## Memory and start-up", "", header, "| --- | ---: | ---: | ---: |"]
    for name, server in run.servers.items():
        rss, hwm = run.memory_end.get(name, (0, 0))
        lines.append(f"| {name}: {server.description} | {server.ready_seconds:.2f} s | {rss / 1024:.0f} MiB "
                     f"| {hwm / 1024:.0f} MiB |")  # fmt: skip
    if run.memory:
        lines += ["", "`ours` (one process, every model loaded) over the run:", "", "| when | RSS | peak RSS |",
                  "| --- | ---: | ---: |"]  # fmt: skip
        lines += [f"| {label} | {rss / 1024:.1f} MiB | {hwm / 1024:.1f} MiB |" for label, rss, hwm in run.memory]
        last = run.memory[-1]
        growth = []
        for label in ("after warm-up", "after round 1"):
            base = next((m for m in run.memory if m[0] == label), None)
            if base and base is not last:
                growth.append(f"from {label} to the last reading {(last[1] - base[1]) / 1024:+.1f} MiB "
                              f"({100 * (last[1] - base[1]) / max(base[1], 1):+.1f} %)")  # fmt: skip
        if growth:
            lines += ["", "RSS growth: " + "; ".join(growth) + ". ONNX Runtime's memory arena grows to the largest "
                      "batch it has run (a batch of 256x256 images dominates) and keeps it; growth after that is "
                      "what a leak would show."]  # fmt: skip
    if run.skipped or run.checks:
        lines += ["", "## Checks and omissions", ""]
        lines += [f"- {check}" for check in run.checks]
        lines += [f"- not measured: {what}: {why}" for what, why in run.skipped.items()]
    return "\n".join(lines) + "\n"
