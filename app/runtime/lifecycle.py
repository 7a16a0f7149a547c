"""Graceful shutdown: the drain before uvicorn's own shutdown, and a JSON answer for what the deadline cuts off.

Kubernetes sends SIGTERM and, at the same moment, starts removing the pod from the Service's endpoints; for a
few seconds new requests still arrive. On the first SIGTERM this process:

1. starts draining: readiness answers 503 (so the endpoint controller stops routing here) while every request is
   still served, each answer with `Connection: close`, and every idle kept-alive connection is closed at once
   (while the listener is still open, so a client that finds its connection closed reconnects; a request written
   to an idle connection as the listener closes would be reset unprocessed);
2. after `AE_DRAIN_SECONDS` hands over to uvicorn's handler: the listener closes, in-flight requests finish
   within the rest of `AE_GRACEFUL_TIMEOUT_SECONDS`, the lifespan closes the sessions and the process exits 0;
3. one second before the grace period ends, cuts off whatever still runs (a long inference, a body still
   arriving): each such request is cancelled and answered 503 `shutting_down` with `Retry-After`, in JSON, and
   logged once, instead of uvicorn's plain-text 500 and traceback when it cancels tasks at the deadline.

A second SIGTERM, or SIGINT, skips what is left of the drain. The handler is installed from the app's lifespan,
which uvicorn runs in the main thread after installing its own signal handlers; each worker process does this for
itself. Under a test client (not the main thread) nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger("app.lifecycle")

SignalHandler = Callable[[int, FrameType | None], Any]
CUTOFF_MARGIN_SECONDS = 1.0
"""How long before the end of the grace period running requests are cut off, so that their answers are written
before uvicorn cancels what is left."""


class Lifecycle:
    """Whether this process is draining, the SIGTERM handler that starts the drain, and the requests running."""

    def __init__(
        self, drain_seconds: float, graceful_timeout_seconds: float, on_drain: Iterable[Callable[[], object]] = ()
    ) -> None:
        self.drain_seconds = drain_seconds
        self.graceful_timeout_seconds = graceful_timeout_seconds
        self.draining = False
        self.running: set[asyncio.Task[Any]] = set()
        """The tasks of the requests being handled (the request context middleware keeps it)."""
        self.cut_off: set[asyncio.Task[Any]] = set()
        self._on_drain = list(on_drain)
        self._previous: SignalHandler | None = None
        self._handler: SignalHandler | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.signalled_at: float | None = None
        """`time.monotonic()` of the first SIGTERM (None before)."""

    def add_drain_callback(self, callback: Callable[[], object]) -> None:
        """Call `callback` (on the event loop) when the drain starts, e.g. the gRPC health turning NOT_SERVING."""
        self._on_drain.append(callback)

    def remaining_grace(self) -> float:
        """Seconds left of the grace period before the cut-off (all of it when no SIGTERM came)."""
        total = max(0.0, self.graceful_timeout_seconds - CUTOFF_MARGIN_SECONDS)
        if self.signalled_at is None:
            return total
        return max(0.0, total - (time.monotonic() - self.signalled_at))

    def start_draining(self) -> None:
        """Readiness answers 503 and answers close their connections from now on (requests are still served)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"drain_seconds": self.drain_seconds})
        for callback in self._on_drain:
            try:
                callback()
            except Exception:  # closing connections must never stop the shutdown
                log.exception("drain callback failed")

    def install(self) -> bool:
        """Put the drain in front of the server's SIGTERM handler; False when there is no way to."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False  # no server handler to hand over to (not run by uvicorn)
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop now
                previous(signum, frame)
                return
            # Signal handlers run between bytecodes of the main thread: hand over to the loop safely.
            loop.call_soon_threadsafe(self._begin, loop, previous, signum)

        self._previous, self._handler = previous, on_sigterm
        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def _begin(self, loop: asyncio.AbstractEventLoop, previous: SignalHandler, signum: int) -> None:
        self.signalled_at = time.monotonic()
        self.start_draining()
        cutoff = max(0.0, self.graceful_timeout_seconds - CUTOFF_MARGIN_SECONDS)
        self._timers.append(loop.call_later(cutoff, self.cut_off_running))
        if self.drain_seconds > 0:
            self._timers.append(loop.call_later(self.drain_seconds, self._finish_drain, previous, signum))
        else:
            previous(signum, None)

    def _finish_drain(self, previous: SignalHandler, signum: int) -> None:
        log.info("drain over: closing the listener and finishing in-flight requests")
        previous(signum, None)

    def cut_off_running(self) -> int:
        """Cancel every request still running (the grace period is ending); returns how many."""
        tasks = [task for task in self.running if not task.done()]
        for task in tasks:
            self.cut_off.add(task)
            task.cancel()
        if tasks:
            log.warning(
                "shutdown deadline: cutting off the requests still running",
                extra={"requests": len(tasks), "graceful_timeout_seconds": self.graceful_timeout_seconds},
            )
        return len(tasks)

    def uninstall(self) -> None:
        """Give SIGTERM back to the server's handler (at the end of the lifespan)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._handler is not None and signal.getsignal(signal.SIGTERM) is self._handler:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = self._handler = None
