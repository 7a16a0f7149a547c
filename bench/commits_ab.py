"""Speed A/B between two commits: a server running `--old` (a git work tree of that commit) beside one running
this checkout, the same cases driven in turn, interleaved round after round, so that drift hits both alike.

    .venv/bin/python -m bench.commits_ab --old a3d4185 --rounds 3 --seconds 5

The cases are the benchmark's own (`bench/cases.py`): by default 1-row JSON encode, V2 JSON 1 row and 64-row
`.npy` encode at concurrency 32, and a 256x256 PNG denoise at 8. Prints every measurement, then the median
requests/s of each case for both and their ratio. Run by hand (minutes), never in CI; it is how a refactoring
shows that it costs no speed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.cases import build_cases
from bench.load import run_wrk
from bench.servers import REPO, start_ours

CASES = {"encode-json-1": 32, "v2-json-1": 32, "encode-npy-64": 32, "denoise-png-256": 8}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.commits_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the commit to compare with (any git revision)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per case, server and round")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated case names (default {','.join(CASES)})")
    args = p.parse_args(argv)
    names = args.cases.split(",")
    work = Path(tempfile.mkdtemp(prefix="ae-commits-ab-"))
    tree = work / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.old], cwd=REPO, check=True)
    cases = [c for c in build_cases(REPO / "models") if c.name in names]
    servers = {}
    try:
        servers["old"] = start_ours("old", args.old, work, 1, {}, checkout=tree)
        servers["new"] = start_ours("new", "this checkout", work, 1, {})
        rates: dict[tuple[str, str], list[float]] = {}
        for round_ in range(1, args.rounds + 1):
            for case in cases:
                for label, server in servers.items():
                    result = run_wrk(
                        server.base_url + case.path,
                        case.body_file(work),
                        case.content_type,
                        case.headers,
                        CASES.get(case.name, 32),
                        args.seconds,
                    )
                    rate = result.rps
                    rates.setdefault((case.name, label), []).append(rate)
                    print(f"round {round_} {case.name:16s} {label}: {rate:8.0f} req/s, p99 {result.p99_ms:7.1f} ms, "
                          f"{result.errors} errors", flush=True)  # fmt: skip
        print(f"\n| case | {args.old} req/s | this checkout req/s | ratio |\n| --- | ---: | ---: | ---: |")
        for case in cases:
            old = statistics.median(rates[(case.name, "old")])
            new = statistics.median(rates[(case.name, "new")])
            print(f"| {case.name} | {old:,.0f} | {new:,.0f} | {new / old:.3f} |")
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
