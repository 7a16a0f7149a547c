"""Freed memory handed back to the OS (app/runtime/memory.py): the mechanism, its switch and its wiring into the app."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.runtime.memory import MallocTrimmer, load_malloc_trim, resident_bytes
from app.runtime.metrics import Metrics
from app.runtime.offload import Offload

from .conftest import make_client

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
