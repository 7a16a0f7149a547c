"""Graceful shutdown: the drain before uvicorn's own shutdown.

Kubernetes sends SIGTERM and, at the same moment, starts removing the pod from the Service's endpoints; for a
few seconds new requests still arrive. With a drain delay (`AE_DRAIN_SECONDS`), the first SIGTERM only marks
the process as draining: readiness answers 503 (so the endpoint controller stops routing here) while every
request is still served. When the delay is over, uvicorn's own handler runs: the listener closes, in-flight
requests finish (within the rest of `AE_GRACEFUL_TIMEOUT_SECONDS`), the lifespan closes the sessions and the
process exits 0. A second SIGTERM, or SIGINT, skips what is left of the drain.

The handler is installed from the app's lifespan, which uvicorn runs in the main thread after installing its
own signal handlers; each worker process does this for itself. Under a test client (not the main thread)
nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("app.lifecycle")

SignalHandler = Callable[[int, FrameType | None], Any]


class Lifecycle:
    """Whether this process is draining, and the SIGTERM handler that starts the drain."""

    def __init__(self, drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.draining = False
        self._previous: SignalHandler | None = None
        self._handler: SignalHandler | None = None

    def start_draining(self) -> None:
        """Readiness answers 503 from now on (requests are still served)."""
        if not self.draining:
            self.draining = True
            log.info("draining", extra={"drain_seconds": self.drain_seconds})

    def install(self) -> bool:
        """Put the drain in front of the server's SIGTERM handler; False when there is nothing to do or no way to."""
        if self.drain_seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False  # no server handler to hand over to (not run by uvicorn)
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop now
                previous(signum, frame)
                return
            self.start_draining()
            # Signal handlers run between bytecodes of the main thread: hand over to the loop safely.
            loop.call_soon_threadsafe(loop.call_later, self.drain_seconds, self._finish_drain, previous, signum)

        self._previous, self._handler = previous, on_sigterm
        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def _finish_drain(self, previous: SignalHandler, signum: int) -> None:
        log.info("drain over: closing the listener and finishing in-flight requests")
        previous(signum, None)

    def uninstall(self) -> None:
        """Give SIGTERM back to the server's handler (at the end of the lifespan)."""
        if self._handler is not None and signal.getsignal(signal.SIGTERM) is self._handler:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = self._handler = None
