"""Memory given back after a burst: idle RSS before, during and for `--watch` seconds after a burst of large denoise
requests (issue 19's case: ten 1024x1024 photographs, four at a time, `.npy` in and out).

    .venv/bin/python -m bench.burst_memory                       # defaults, ~1-2 minutes
    .venv/bin/python -m bench.burst_memory --env "AE_CPU_MEM_ARENA=0" --side 1024 --requests 10 --concurrency 4

Starts `python -m app` (production settings plus `--env`), sends one small request of the same kind (a 64x64
image: the first request of a route imports and caches what every later one reuses, which is not the burst's
doing), waits until it is idle, reads its RSS, sends the burst, then reads RSS every second. Prints one Markdown
line per sample and the verdict against the target (idle RSS back within 25 % of the pre-burst level within
30 s). Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.servers import http, start_ours

TARGET_RATIO = 1.25
TARGET_SECONDS = 30.0


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.burst_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="", help="server settings, space-separated NAME=value")
    p.add_argument("--model", default="photo")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--watch", type=float, default=45.0, help="seconds of RSS samples after the burst")
    args = p.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env.split())
    work = Path(tempfile.mkdtemp(prefix="ae-burst-"))
    server = start_ours("burst", args.env or "defaults", work, 1, env)
    try:
        rng = np.random.default_rng(0)
        url = f"{server.base_url}/v1/models/{args.model}/denoise"
        headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
        small = npy(rng.uniform(0, 1, size=(1, 3, 64, 64)).astype(np.float32))
        warm, _ = http("POST", url, small, headers, timeout=60)
        time.sleep(12.0)  # start-up's and the small request's allocations settle; the periodic malloc trim runs
        before = server.memory_kib()[0]
        body = npy(rng.uniform(0, 1, size=(1, 3, args.side, args.side)).astype(np.float32))

        def one(_: int) -> tuple[int, float]:
            started = time.perf_counter()
            status, _ = http("POST", url, body, headers, timeout=600)
            return status, time.perf_counter() - started

        peak = before
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            futures = [pool.submit(one, i) for i in range(args.requests)]
            while not all(f.done() for f in futures):
                peak = max(peak, server.memory_kib()[0])
                time.sleep(0.2)
            results = [f.result() for f in futures]
        burst_seconds = time.perf_counter() - started
        statuses = sorted({status for status, _ in results})
        print(f"# {args.requests} x {args.side}x{args.side} {args.model} denoise, {args.concurrency} at a time, "
              f"settings: {args.env or 'defaults'}")  # fmt: skip
        print(f"# statuses {statuses}; burst {burst_seconds:.1f} s ({args.requests / burst_seconds:.2f} images/s)")
        print(f"# RSS before the burst: {before / 1024:.0f} MiB; highest seen during it: {peak / 1024:.0f} MiB")
        print("| seconds after the burst | RSS MiB | / before |")
        print("| --- | --- | --- |")
        back_at = None
        end = time.perf_counter() + args.watch
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            rss = server.memory_kib()[0]
            elapsed = time.perf_counter() - t0
            print(f"| {elapsed:.0f} | {rss / 1024:.0f} | {rss / before:.2f} |", flush=True)
            if back_at is None and rss <= TARGET_RATIO * before:
                back_at = elapsed
            time.sleep(1.0)
        met = back_at is not None and back_at <= TARGET_SECONDS
        verdict = f"back within {TARGET_RATIO - 1:.0%} after {back_at:.0f} s" if back_at is not None else "never back"
        print(f"# target (within 25 % in {TARGET_SECONDS:.0f} s): {'met' if met else 'MISSED'}: {verdict}")
        return 0 if statuses == [200] and warm == 200 else 1
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
