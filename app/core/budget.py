"""Memory budgets: how many bytes of request data and of inference working memory one worker holds at once.

Without them a small request can cost a lot of memory: 256 all-black 1024x1024 PNGs are a 308 KB multipart body
that decodes to a gigabyte, a 32 MiB JSON body of short numbers parses into ~500 MiB of Python floats, and a
4,096-row latent batch through a convolutional decoder needs over a gigabyte inside ONNX Runtime. Each of these
is decided *before* the memory is spent, from what the headers say (Content-Length, the image headers, the
commas of a JSON body, the tensor shapes), and reserved from a budget:

- `request_memory_budget_bytes`: bodies being read and what parsing and decoding make of them, held by each
  request until its answer is sent (`Reservation`, one per request, released by the admission middleware);
- `image_memory_budget_bytes`: decoded images and what becomes of them (a photograph's float pixels, its
  denoised copy, the encoded answer), estimated from the image headers before decoding and held until the answer
  is sent, so that concurrent large uploads wait (or get 503) instead of pushing the process past its memory;
- `inference_memory_budget_bytes`: ONNX Runtime's working memory for the calls in flight, held by each request
  from queueing to its result (`InferenceEngine.run`), estimated per graph at load (`ModelEntry` measures it).

A request that would never fit (its need exceeds the whole budget) is refused with 413; one that does not fit
*now* waits, first come first served, up to `memory_wait_seconds`, then gets 503 `overloaded` with
`Retry-After`. The budgets are separate, and taken in one order (request, image, inference; never the reverse),
so that a request holding one never waits for another that holders of the first block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any

from app.core.errors import Overloaded, PayloadTooLarge

MIB = 1024 * 1024


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.1f} MiB"


class MemoryBudget:
    """A byte count handed out first come, first served, with a bounded wait."""

    def __init__(self, name: str, limit: int, wait_seconds: float, retry_after_seconds: int) -> None:
        self.name = name
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.retry_after = retry_after_seconds
        self.held = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _take(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def try_acquire(self, nbytes: int) -> bool:
        """Take `nbytes` now if they fit and nobody waits before us (never waits)."""
        if nbytes <= 0:
            return True
        if self._waiters or self.held + nbytes > self.limit:
            return False
        self._take(nbytes)
        return True

    def _too_large(self, nbytes: int, what: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"{what} needs {mib(nbytes)} of memory, more than this service's {self.name} budget of {mib(self.limit)}; "
            "send less per request",
            {"needed_bytes": nbytes, "budget_bytes": self.limit, "budget": self.name},
        )

    def overloaded(self, nbytes: int, what: str) -> Overloaded:
        return Overloaded(
            f"{what} needs {mib(nbytes)} of memory and the {self.name} budget ({mib(self.limit)}) is in use by "
            f"other requests; retry after {self.retry_after} s",
            {"needed_bytes": nbytes, "budget_bytes": self.limit, "budget": self.name},
            {"Retry-After": str(self.retry_after)},
        )

    async def acquire(self, nbytes: int, what: str) -> None:
        """Take `nbytes`, waiting up to `wait_seconds` for room: 413 when it can never fit, 503 when not in time."""
        if nbytes > self.limit:
            raise self._too_large(nbytes, what)
        if self.try_acquire(nbytes):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (nbytes, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, self.wait_seconds)
        except asyncio.TimeoutError:
            self._forget(waiter)
            raise self.overloaded(nbytes, what) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # granted just as the caller was cancelled: give it back
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._wake()  # a big waiter leaving may let smaller ones behind it through

    def release(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self.held = max(0, self.held - nbytes)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.held + nbytes > self.limit:
                return
            self._waiters.popleft()
            self._take(nbytes)
            future.set_result(None)


class Reservation:
    """What one request holds of a budget; everything goes back at once when the request ends."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def try_grow(self, nbytes: int) -> bool:
        if self.budget.try_acquire(nbytes):
            self.held += max(0, nbytes)
            return True
        return False

    async def grow(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` more (waiting for room as `MemoryBudget.acquire` does)."""
        if nbytes <= 0:
            return
        if self.held + nbytes > self.budget.limit:
            raise self.budget._too_large(self.held + nbytes, what)
        await self.budget.acquire(nbytes, what)
        self.held += nbytes

    async def ensure(self, total: int, what: str) -> None:
        """Hold at least `total` bytes in all."""
        await self.grow(total - self.held, what)

    def release(self) -> None:
        held, self.held = self.held, 0
        self.budget.release(held)


MEMORY_STATE = "memory"
"""The key of a request's `Reservation` in its ASGI scope's `state` (the admission middleware puts it there)."""
IMAGE_MEMORY_STATE = "image_memory"
"""The key of a request's image memory `Reservation` in its scope's `state` (put there by the route that decodes
images, `app.api.inputs.reserve_decoding`; released by the admission middleware when the request ends, after its
answer, which is encoded from the decoded pixels, has been sent)."""


def request_reservation(scope: Mapping[str, Any]) -> Reservation | None:
    """The request-memory reservation held for the request of this scope (None outside the admission
    middleware)."""
    state = scope.get("state")
    return state.get(MEMORY_STATE) if state else None
