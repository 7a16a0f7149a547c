"""CPU-bound request work off the event loop (large JSON bodies, image decoding) in a bounded set of threads.

anyio's default pool lends up to 40 threads to whoever asks: with 32 concurrent 28x28 PNG uploads the process
ran 41 threads (13 with this pool), each with a malloc arena of its own, all contending with the event loop for
the GIL. The work is CPU-bound (Pillow and numpy release the GIL only part of the time), so a few threads per
usable CPU do as well; requests beyond the bound wait their turn on the loop, where they cost nothing. (ONNX
Runtime calls have their own threads: `app.core.engine`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from app.settings import Settings, usable_cpus

T = TypeVar("T")


class Offload:
    """Runs functions in at most `threads` worker threads at once (per worker process)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._limiter = CapacityLimiter(threads)

    @classmethod
    def from_settings(cls, settings: Settings) -> Offload:
        return cls(settings.offload_threads or max(2, 2 * usable_cpus() // settings.workers))

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """`func(*args)` in a worker thread; waits for a free one first.

        An exception comes back as a value and is raised here: raised through anyio's future, it would sit in a
        reference cycle (the awaiting frame holds the future, the future the exception, the exception's
        traceback that frame) and keep the request's body alive until a full garbage collection; a bad
        upload is exactly what a hostile client repeats."""
        outcome = await anyio.to_thread.run_sync(_capture, func, args, limiter=self._limiter)
        if isinstance(outcome, _Failure):
            error = outcome.error
            try:
                raise error
            finally:
                del error, outcome
        return outcome


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _capture(func: Callable[..., T], args: tuple[object, ...]) -> T | _Failure:
    try:
        return func(*args)
    except Exception as exc:
        return _Failure(exc)
