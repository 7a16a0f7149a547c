"""glibc's malloc arenas, capped for the whole process (setting `malloc_arena_max`).

glibc gives threads arenas of their own, up to eight per CPU, and keeps what each arena once held. The service's
threads (ONNX Runtime calls, the offload pool, the event loop) allocate and free each other's arrays, so under a
steady load of small requests RSS stepped from 183 to 274 MiB after a few minutes and stayed there; with two
arenas the same load held at ~207 MiB (two servers side by side, the same requests interleaved: bench/README.md).
`MALLOC_ARENA_MAX` in the environment does the same from process start and wins over the setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("app.memory")

M_ARENA_MAX = -8  # glibc's <malloc.h>
ENV = "MALLOC_ARENA_MAX"


def limit_malloc_arenas(arenas: int) -> bool:
    """Let threads started from now on share at most `arenas` malloc arenas. False where that does not apply: 0
    (glibc's default), `MALLOC_ARENA_MAX` already in the environment (glibc read it at start-up), or a C library
    without glibc's `mallopt`."""
    if arenas <= 0 or ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.debug("mallopt(M_ARENA_MAX, %d) was refused by this C library", arenas)
    return done
