"""Freed memory handed back to the OS (app/runtime/memory.py): the mechanism, its switch and its wiring into the app."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.runtime.memory import MallocTrimmer, load_malloc_trim, resident_bytes
from app.runtime.metrics import Metrics
from app.runtime.offload import Offload

from .conftest import make_client

ROOT = Path(__file__).resolve().parents[2]

glibc = pytest.mark.skipif(load_malloc_trim() is None, reason="malloc_trim is glibc's (not this libc)")


@glibc
def test_a_trim_returns_memory_that_free_kept() -> None:
    """64 KiB blocks come from the heap (below glibc's mmap threshold); with the last one still alive the heap
    cannot shrink from the top, so free() alone keeps ~128 MiB resident. malloc_trim gives it back."""
    blocks = [bytes(64 * 1024) for _ in range(2048)]
    pinned = blocks[-1]
    del blocks
    held = resident_bytes()
    metrics = Metrics()
    trimmer = MallocTrimmer(10.0, Offload(1), metrics)
    released = asyncio.run(trimmer.trim_now())
    assert released > 64 * 1024 * 1024, (released, held)
    assert resident_bytes() < held - 64 * 1024 * 1024
    assert metrics.registry.get_sample_value("ae_memory_trimmed_bytes_total") == released
    assert metrics.registry.get_sample_value("ae_memory_trim_seconds_count") == 1
    assert len(pinned) == 64 * 1024


def test_zero_seconds_switches_it_off() -> None:
    trimmer = MallocTrimmer(0, Offload(1))
    assert not trimmer.enabled

    async def started() -> bool:
        trimmer.start()
        running = trimmer._task is not None
        await trimmer.stop()
        return running

    assert asyncio.run(started()) is False


@glibc
def test_the_service_trims_on_its_interval_and_reports_it() -> None:
    with make_client(malloc_trim_seconds=0.05) as client:
        deadline = time.monotonic() + 10
        while True:
            text = client.get("/metrics").text
            counts = [line for line in text.splitlines() if line.startswith("ae_memory_trim_seconds_count")]
            if counts and float(counts[0].split()[-1]) >= 2:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
        trimmer = client.app.state.context.trimmer
        assert trimmer.enabled
    assert trimmer._task is None  # stopped with the app


def _probe(models: Path, *flags: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.app.arena_release_probe", str(models), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_a_large_calls_arena_memory_goes_back_after_its_release_run(tmp_path: Path, models_dir: Path) -> None:
    """Four 512x512 photographs through the real engine (each a call above SHRINK_ARENA_ABOVE_BYTES), then one
    malloc_trim, in a fresh process. ONNX Runtime shrinks its arena only of regions free when a run ends, and the
    call's own outputs are still in it then: without the release run ~15 MiB stays resident; with it, ~1 MiB."""
    (tmp_path / "photo").symlink_to(models_dir / "photo", target_is_directory=True)
    released = _probe(tmp_path)
    kept = _probe(tmp_path, "--no-release")
    assert released["releases"] >= 1 and kept["releases"] == 0
    grew = released["after_mib"] - released["before_mib"]
    grew_without = kept["after_mib"] - kept["before_mib"]
    assert grew < 6, released
    assert grew_without > grew + 8, (released, kept)  # the release run is what gives it back


def test_malloc_tunables_are_added_to_what_the_environment_sets() -> None:
    """`AE_MALLOC_TUNABLES` goes into `GLIBC_TUNABLES` for the re-run process: added to the operator's own, whose
    values win name by name; nothing to do when none are asked for, when they are all there, or once re-run."""
    from app.runtime.memory import TUNABLES_ENV, TUNED_MARKER, tuned_environment

    ours = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304"
    if tuned_environment(ours, {}) is None:
        pytest.skip("not glibc: the tunables are not applied")
    env = tuned_environment(ours, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", TUNABLES_ENV: ours, TUNED_MARKER: "1"}
    theirs = {TUNABLES_ENV: "glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=2"}
    env = tuned_environment(ours, theirs)
    assert env is not None
    assert env[TUNABLES_ENV] == "glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert tuned_environment("", {}) is None
    assert tuned_environment(ours, {TUNABLES_ENV: "glibc.malloc.hugetlb=0:glibc.malloc.mmap_threshold=1"}) is None
    assert tuned_environment(ours, {TUNED_MARKER: "1"}) is None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists() or load_malloc_trim() is None, reason="Linux, glibc")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"},
            "glibc.malloc.mmap_threshold=1048576:glibc.malloc.hugetlb=1",
        ),
        ({"AE_MALLOC_TUNABLES": ""}, None),
    ],
)
def test_the_server_process_runs_with_the_malloc_tunables(
    tmp_path: Path, env: dict[str, str], expected: str | None
) -> None:
    """`python -m app` runs itself again (same process id, same command) with the tunables in `GLIBC_TUNABLES`,
    which glibc reads at start, and says which in its start-up log line; `AE_MALLOC_TUNABLES=""` leaves malloc
    alone. (The process's /proc environ is not the place to read them: glibc rewrites its own copy there.)"""
    from tests.app.live import running
    from tests.app.tiny_models import write_sigma_denoiser

    write_sigma_denoiser(tmp_path / "models" / "photoish")
    with running(tmp_path / "models", tmp_path / "server.log", {"AE_GRPC_PORT": "0", **env}) as server:
        assert ("AE_MALLOC_TUNED" in _environ(server.process.pid)) == (expected is not None)
        running_command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [arg.decode() for arg in running_command] == server.process.args  # the same command, run again
        started = [json.loads(line) for line in server.log().splitlines() if '"service started"' in line]
        assert started and started[0]["glibc_tunables"] == expected
