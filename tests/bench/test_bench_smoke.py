"""The benchmark still works: `python -m bench` on one case for a second, against a real server.

The benchmark itself is run by hand (`python -m bench`, see bench/README.md); this only proves the harness
starts the server, drives it with wrk, measures the bare runtime and writes a report with real numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk (the benchmark's load generator) is not installed: apt-get install -y wrk",
    ),
]


def table_row(report: str, variant: str, concurrency: int) -> list[str]:
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] == variant and cells[1] == str(concurrency):
            return cells
    raise AssertionError(f"no row for {variant} at concurrency {concurrency} in:\n{report}")


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    command = [
        sys.executable, "-m", "bench", "--cases", "encode-json-1,encode-npy-64,encode-npy-512",
        "--variants", "ours,noop-raw,floor,2-workers", "--concurrency", "4", "--duration", "1", "--rounds", "1",
        "--memory-requests", "0",
        "--bare-seconds", "0.2", "--out", str(out), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text()
    assert report == done.stdout
    assert "python -m bench --cases encode-json-1" in report
    for variant in ("ours", "noop-raw"):
        row = table_row(report, variant, 4)
        requests_per_s = float(row[2].replace(",", ""))
        assert requests_per_s > 0, row
        assert row[-1] == "", f"{variant} answered with errors: {row}"
    assert re.search(r"\| encode-json-1 \| dense\.encoder \| 1 \| [\d,]+ \|", report), "no bare-runtime row"
    assert re.search(r"\| ours: .* \| \d+\.\d+ s \| \d+ MiB \| \d+ MiB \|", report), "no start-up/memory row"
    assert "ours / `noop-raw` requests/s" in report
    # The floor (bench/peers/floor.py) answered, correctly, and ours is compared with it.
    assert re.search(r"`floor` encode-json-1 answer vs in-process ONNX Runtime .* \(within 1e-05\)", report), report
    assert re.search(r"\| /v1 encode 1-row JSON, c=4: `ours` / `floor` requests/s \| [\d.]+x \|", report), report
    # Issue 19's workers target: 2 workers' .npy rows/s against bare ORT's best, one caller or one per CPU.
    workers = re.search(
        r"\| `.npy` encode \(64 / 512 rows\), c=4: `2-workers` / bare ORT's best rows/s [^|]*\| ([\d.]+)x \(", report
    )
    assert workers and float(workers.group(1)) > 0, report


def test_memory_ab_smoke() -> None:
    """`python -m bench.memory_ab` for one short cycle: two real servers, their RSS before and after."""
    command = [sys.executable, "-m", "bench.memory_ab", "--cycles", "1", "--seconds", "1", "--b", "AE_GC_FREEZE=0"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = re.findall(r"^\| (ready|after cycle 1 \(([\d,]+) requests\)) \| ([\d.]+) \| ([\d.]+) \|$", done.stdout, re.M)
    assert [r[0].split(" (")[0] for r in rows] == ["ready", "after cycle 1"], done.stdout
    assert int(rows[1][1].replace(",", "")) > 0
    assert all(float(r[2]) > 50 and float(r[3]) > 50 for r in rows)  # every model loaded: well over 50 MiB
