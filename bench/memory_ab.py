"""Memory A/B: two servers side by side under the same small-request load, interleaved; RSS after every cycle.

    .venv/bin/python -m bench.memory_ab --cycles 4 --a "AE_MALLOC_TRIM_SECONDS=10" --b "AE_MALLOC_TRIM_SECONDS=0"

`--a` / `--b` are space-separated `NAME=value` settings for each server (production settings otherwise). A cycle
drives each server in turn with wrk at concurrency 32 through every small-request case of the benchmark
(`--seconds` each), so drift and other load hit both alike. What a leak looks like: RSS rising cycle after
cycle; what an allocator's arenas look like: a step, then flat. Run by hand (minutes), never in CI.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.cases import build_cases
from bench.load import run_wrk
from bench.servers import REPO, start_ours

SMALL_CASES = ("denoise-png-28", "encode-npy-64", "encode-json-1", "v2-json-1", "reconstruct-json-1")


def settings(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default="", help="settings of server A (NAME=value ...)")
    p.add_argument("--b", default="", help="settings of server B (NAME=value ...)")
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per case and server")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ae-memory-ab-"))
    cases = [c for c in build_cases(REPO / "models") if c.name in SMALL_CASES]
    servers = {
        "A": start_ours("A", args.a or "defaults", work, 1, settings(args.a)),
        "B": start_ours("B", args.b or "defaults", work, 1, settings(args.b)),
    }
    try:
        print(f"A: {args.a or 'defaults'}\nB: {args.b or 'defaults'}")
        print("| when | A RSS MiB | B RSS MiB |\n| --- | ---: | ---: |")

        def row(label: str) -> None:
            rss = {name: server.memory_kib()[0] / 1024 for name, server in servers.items()}
            print(f"| {label} | {rss['A']:.1f} | {rss['B']:.1f} |", flush=True)

        row("ready")
        for cycle in range(1, args.cycles + 1):
            requests = 0
            for server in servers.values():
                for case in cases:
                    result = run_wrk(
                        server.base_url + case.path,
                        case.body_file(work),
                        case.content_type,
                        case.headers,
                        32,
                        args.seconds,
                    )
                    requests += result.requests
            row(f"after cycle {cycle} ({requests:,} requests)")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
