"""Give memory the process has freed back to the operating system, every `AE_MALLOC_TRIM_SECONDS`.

glibc's malloc keeps what a thread frees in that thread's arena for reuse and returns to the kernel only the top
of each heap, and then only past a threshold: a free block under a live one stays resident. `malloc_trim(0)`
walks every arena and hands every free page back (`madvise`), not only the top of the heap, so RSS follows what
is really in use. Measured with `python -m bench.memory_ab --a AE_MALLOC_TRIM_SECONDS=10 --b
AE_MALLOC_TRIM_SECONDS=0`: 169 vs 177 MiB, flat over ~490,000 small requests; 10-20 MiB after a burst of 256x256
images (ONNX Runtime's own arena, which keeps the largest batch, is not malloc's and stays).

The trim runs in the offload pool (ctypes releases the GIL), never on the event loop, and only on glibc
(elsewhere it is switched off with a debug line). Each trim is timed and its effect recorded
(`ae_memory_trim_seconds`, `ae_memory_trimmed_bytes_total`): ~1 ms per trim under 64-row `.npy` load at c=32.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping

from app.runtime.metrics import Metrics
from app.runtime.offload import Offload

log = logging.getLogger("app.memory")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where there is none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_resident_bytes() -> int | None:
    """The highest resident set size this process has reached (VmHWM), None where /proc is not there."""
    return _status_bytes("VmHWM")


def measure_growth(func: Callable[[], object]) -> int | None:
    """Bytes of memory `func()` makes resident at its peak beyond what was resident before it, measured with the
    kernel's peak-RSS counter (reset through `/proc/self/clear_refs`, Linux >= 4.0), after handing freed memory
    back to the OS so that reused free blocks do not hide the growth. None where that cannot be done."""
    trim = load_malloc_trim()
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    func()
    peak = peak_resident_bytes()
    if before is None or peak is None:
        return None
    return max(0, peak - before)


TUNABLES_ENV = "GLIBC_TUNABLES"
TUNED_MARKER = "AE_MALLOC_TUNED"
"""Set in the environment of the re-run process (`tuned_environment`): it never re-runs itself twice."""


def tuned_environment(tunables: str, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment in which to run the server again so that glibc's malloc starts with `tunables`
    (`AE_MALLOC_TUNABLES`; glibc reads `GLIBC_TUNABLES` only when a process starts), or None when there is nothing
    to do: none asked for, not glibc, already run again, or every one of them already in `GLIBC_TUNABLES` (what the
    operator sets there wins, name by name)."""
    wanted = [item for item in tunables.split(":") if item]
    if not wanted or environ.get(TUNED_MARKER) or platform.libc_ver()[0] != "glibc":
        return None
    present = [item for item in environ.get(TUNABLES_ENV, "").split(":") if item]
    names = {item.split("=", 1)[0] for item in present}
    missing = [item for item in wanted if item.split("=", 1)[0] not in names]
    if not missing:
        return None
    return {**environ, TUNABLES_ENV: ":".join(present + missing), TUNED_MARKER: "1"}


class MallocTrimmer:
    """Calls `malloc_trim(0)` every `interval` seconds, in the offload pool, while the service runs."""

    def __init__(self, interval: float, offload: Offload, metrics: Metrics | None = None) -> None:
        self.interval = interval
        self._offload = offload
        self._metrics = metrics
        self._trim = load_malloc_trim() if interval > 0 else None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def start(self) -> None:
        if self.interval > 0 and self._trim is None:
            log.debug("malloc_trim is not available here (not glibc): memory is not trimmed")
        if self._trim is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="malloc_trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def trim_now(self) -> int:
        """One trim; returns the bytes of RSS it gave back (never negative)."""
        return await self._offload.run(self._trim_blocking)

    def _trim_blocking(self) -> int:
        assert self._trim is not None
        before = resident_bytes()
        started = time.perf_counter()
        self._trim(0)
        elapsed = time.perf_counter() - started
        released = max(0, before - resident_bytes())
        if self._metrics is not None:
            self._metrics.memory_trim_seconds.observe(elapsed)
            self._metrics.memory_trimmed_bytes.inc(released)
        log.debug("malloc_trim", extra={"released_bytes": released, "seconds": round(elapsed, 6)})
        return released

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.trim_now()
            except Exception:  # never let a failed trim end the loop or reach a request
                log.exception("malloc_trim failed")
