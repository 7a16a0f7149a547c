"""Admission and limits in front of the routes, as plain ASGI middleware, before any body is buffered.

`AdmissionMiddleware` decides, in this order:

- the body's size limit, from `Content-Length` before reading and while streaming (chunked bodies have no
  length), applied to the *decompressed* size of `Content-Encoding: gzip` / `deflate` bodies, which are inflated
  incrementally and never past the limit (a zip bomb is a 413, not an out-of-memory); other encodings are 415;
- a request that has a body is first a *body read*: it holds one of `max_body_reads` (503 `overloaded` beyond)
  and one of its client's `max_body_reads_per_client` (429 `too_many_requests` beyond; the client is the peer
  address, or the one a trusted proxy names in `X-Forwarded-For`), plus its declared length from the request
  memory budget (app/core/budget.py). It must arrive at `body_min_rate_bytes` per second after a grace of
  `body_rate_grace_seconds`, and in `body_timeout_seconds` at most (408 otherwise): uvicorn has no read deadline,
  and a trickling client would otherwise hold its place for ever;
- only once its body is complete (at once for a request without one) does a request take one of the
  `max_in_flight_requests` slots (503 `overloaded` with `Retry-After` beyond; uvicorn's `--limit-concurrency`
  answers without it, in plain text). So clients still sending their bodies never starve the requests that are
  ready to run: three hundred trickling connections used to hold every slot for a minute.

Health paths are exempt from the counts so that probes answer under load. A client that disconnects mid-body
is recorded as 499 (nginx's convention) and releases everything. Every answer goes through `render_error`, so it
has the route's error shape (ours, or the Open Inference Protocol's under `/v2`). When the middleware answers
while the route is reading, the route sees a disconnect and whatever it tries to send afterwards is dropped.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error, route_path
from app.core.budget import IMAGE_MEMORY_STATE, MEMORY_STATE, MemoryBudget, Reservation
from app.core.errors import ServiceError
from app.settings import Settings

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
"""Paths that must answer even when the service is saturated (probes, metrics scrapes)."""

SUPPORTED_ENCODINGS = ("gzip", "deflate")
_GZIP_NAMES = ("gzip", "x-gzip")
_DISCONNECT: Message = {"type": "http.disconnect"}
CLIENT_CLOSED_REQUEST = 499


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Answer with `error` in the route's protocol's shape (the middleware's own refusals)."""
    _state(scope)["error_type"] = error.type
    response = render_error(route_path(scope), error.status, error.type, error.message, error.details, error.headers)
    await response(scope, receive, send)


class BodyRejected(ServiceError):
    """A refusal decided here (body, counts, memory), with the status it is answered with."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, details, headers)
        self.status, self.type = status, type_


def client_gone_error() -> BodyRejected:
    """What a request whose client went away is logged and counted as (nginx's 499; the answer goes nowhere)."""
    return BodyRejected(CLIENT_CLOSED_REQUEST, "client_disconnected", "client went away")


class Inflater:
    """Incremental gzip / deflate decoder that never produces more than the room it is given."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder: Any = None
        self.started = False

    def _new_decoder(self, first_bytes: bytes) -> Any:
        if self.encoding in _GZIP_NAMES:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is the zlib format (RFC 9110 8.4.1.2), but some clients send raw deflate: the zlib header's
        # first byte says deflate (low nibble 8) and its first two bytes are a multiple of 31.
        if len(first_bytes) >= 2 and first_bytes[0] & 0x0F == 8 and int.from_bytes(first_bytes[:2], "big") % 31 == 0:
            return zlib.decompressobj(zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode `data`; BodyRejected 413 as soon as the output would exceed `room` bytes, 400 when corrupt."""
        out = bytearray()
        while data:
            if self._decoder is None:
                self._decoder = self._new_decoder(data)
                self.started = True
            try:
                chunk = self._decoder.decompress(data, room - len(out) + 1)
            except zlib.error as exc:
                raise BodyRejected(
                    400, "invalid_encoding", f"the {self.encoding} request body cannot be decoded: {exc}"
                ) from exc
            out += chunk
            if len(out) > room:
                raise BodyRejected(413, "payload_too_large", "too large once decompressed")
            if self._decoder.eof:
                # A gzip file may hold several members one after another; anything else after the end is junk.
                data = self._decoder.unused_data
                if data and self.encoding not in _GZIP_NAMES:
                    raise BodyRejected(400, "invalid_encoding", f"data after the end of the {self.encoding} stream")
                self._decoder = None
            else:
                data = b""
        return bytes(out)

    def finish(self) -> None:
        """The body ended: the compressed stream must be complete."""
        if self._decoder is not None and not self._decoder.eof:
            raise BodyRejected(400, "invalid_encoding", f"the {self.encoding} request body is truncated")


class Admission:
    """This worker's counts: requests past their body (in flight), and bodies being read, in all and per client.

    One event loop per worker: no lock needed."""

    def __init__(self, max_in_flight: int, max_reads: int, max_reads_per_client: int, retry_after_seconds: int):
        self.max_in_flight = max_in_flight
        self.max_reads = max_reads
        self.max_reads_per_client = max_reads_per_client
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0
        self.reads = 0
        self.reads_by_client: dict[str, int] = {}

    def _refusal(self, status: int, type_: str, what: str, limit: int) -> BodyRejected:
        return BodyRejected(
            status,
            type_,
            f"{what}, its limit; retry after {self.retry_after} s",
            {"limit": limit},
            {"Retry-After": self.retry_after},
        )

    def start_read(self, client: str) -> BodyRejected | None:
        """Take a body-read place for `client`, or say why not."""
        limit = self.max_reads_per_client
        if self.reads_by_client.get(client, 0) >= limit:
            sending = f"this client is already sending {limit} request bodies"
            return self._refusal(429, "too_many_requests", sending, limit)
        if self.reads >= self.max_reads:
            receiving = f"the service is receiving {self.reads} request bodies"
            return self._refusal(503, "overloaded", receiving, self.max_reads)
        self.reads += 1
        self.reads_by_client[client] = self.reads_by_client.get(client, 0) + 1
        return None

    def end_read(self, client: str) -> None:
        self.reads -= 1
        left = self.reads_by_client.get(client, 1) - 1
        if left > 0:
            self.reads_by_client[client] = left
        else:
            self.reads_by_client.pop(client, None)

    def enter(self) -> BodyRejected | None:
        """Take an in-flight place, or say why not."""
        if self.in_flight >= self.max_in_flight:
            return self._refusal(
                503, "overloaded", f"the service is handling {self.in_flight} requests", self.max_in_flight
            )
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1


class _BodyClock:
    """The body's deadline, one timer per request (a cancel scope around every `receive()` costs ~10 us more):
    `grace + received / min_rate` seconds after the start (Apache's mod_reqtimeout `body=...,MinRate=...`), never
    later than `total`. When it passes while the route waits for body bytes, that wait is cancelled and reports
    None."""

    def __init__(self, total: float, grace: float, min_rate: float) -> None:
        self.expired = False
        self.received = 0
        self._total, self._grace, self._rate = total, grace, min_rate
        self._waiter: asyncio.Task[Any] | None = None
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        first = grace if grace > 0 and min_rate > 0 else total
        if 0 < total < first:
            first = total
        if first > 0:
            self._handle = self._loop.call_at(self._start + first, self._check)

    def allowed_until(self) -> float:
        """The time by which the body must be complete, given what arrived so far."""
        limits = []
        if self._total > 0:
            limits.append(self._start + self._total)
        if self._grace > 0 and self._rate > 0:
            limits.append(self._start + self._grace + self.received / self._rate)
        return min(limits) if limits else float("inf")

    def reason(self) -> str:
        elapsed = self._loop.time() - self._start
        if self._total > 0 and elapsed >= self._total:
            return f"the request body did not arrive within {self._total:g} s ({self.received} bytes received)"
        return (
            f"the request body arrived too slowly: {self.received} bytes in {elapsed:.1f} s; after "
            f"{self._grace:g} s it must arrive at {self._rate:g} bytes/s or more"
        )

    def _check(self) -> None:
        until = self.allowed_until()
        if self._loop.time() < until:
            self._handle = self._loop.call_at(until, self._check)
            return
        self._handle = None
        self.expired = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()

    async def receive(self, receive: Receive) -> Message | None:
        """The next message, or None when the deadline passed first."""
        if self.expired:
            return None
        task = self._waiter = asyncio.current_task()
        try:
            return await receive()
        except asyncio.CancelledError:
            if not self.expired:
                raise
            if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11: our cancellation, consumed
                task.uncancel()
            return None
        finally:
            self._waiter = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def client_address(scope: Scope) -> str:
    """The client the limits count against: the peer's address, or the one a trusted proxy named (uvicorn
    rewrites `scope["client"]` from `X-Forwarded-For` when the peer is in `forwarded_allow_ips`)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AdmissionMiddleware:
    """Body size (declared, streamed, decompressed), Content-Encoding, body reads (counted, paced, bounded,
    reserved), then the in-flight cap."""

    def __init__(
        self, app: ASGIApp, settings: Settings, admission: Admission, request_memory: MemoryBudget | None = None
    ) -> None:
        self.app = app
        self.admission = admission
        self.memory = request_memory
        self.limit = settings.max_body_bytes
        self.timeout = settings.body_timeout_seconds
        self.grace = settings.body_rate_grace_seconds
        self.min_rate = float(settings.body_min_rate_bytes)

    def _too_large(self, what: str) -> BodyRejected:
        return BodyRejected(
            413, "payload_too_large", f"{what} exceeds the limit of {self.limit} bytes", {"limit": self.limit}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = declared = ""
        chunked = False
        for key, value in scope.get("headers", ()):  # one pass for the three headers this needs
            if key == b"content-length":
                declared = bytes(value).decode("latin-1").strip()
            elif key == b"content-encoding":
                encoding = bytes(value).decode("latin-1").strip().lower()
            elif key == b"transfer-encoding":
                chunked = True
        inflater: Inflater | None = None
        if encoding not in ("", "identity"):
            if encoding not in (*_GZIP_NAMES, "deflate"):
                unsupported = BodyRejected(
                    415,
                    "unsupported_media_type",
                    f"Content-Encoding {encoding!r} is not supported; send {', '.join(SUPPORTED_ENCODINGS)} or "
                    "an uncompressed body",
                    {"accepted_encodings": list(SUPPORTED_ENCODINGS)},
                    {"Accept-Encoding": ", ".join(SUPPORTED_ENCODINGS)},
                )
                await send_error(scope, receive, send, unsupported)
                return
            inflater = Inflater(encoding)
            # The route sees the decoded body: its length is no longer the declared one.
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
            ]
        if declared.isdigit() and int(declared) > self.limit:
            await send_error(scope, receive, send, self._too_large(f"request body of {int(declared)} bytes"))
            return

        has_body = chunked or declared not in ("", "0")
        length = int(declared) if declared.isdigit() and inflater is None else None
        await self._admit(scope, receive, send, inflater, has_body, length)

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        inflater: Inflater | None,
        has_body: bool,
        length: int | None,
    ) -> None:
        """Count the request (a body read, then in flight), reserve its body, pace and bound the body's arrival.
        `length`: the declared body length when it is the length the route will see (not for compressed bodies,
        which are reserved as they inflate)."""
        admission = self.admission
        counted = route_path(scope) not in HEALTH_PATHS
        client = client_address(scope)
        reading = entered = False  # what this request holds of `admission`
        if counted:
            refusal = admission.start_read(client) if has_body else admission.enter()
            if refusal is not None:
                await send_error(scope, receive, send, refusal)
                return
            reading, entered = has_body, not has_body
        reservation = Reservation(self.memory) if self.memory is not None and has_body else None
        clock: _BodyClock | None = None
        produced = 0  # bytes handed to the route (decoded)
        body_done = False
        answered = False  # this middleware sent the response
        app_started = False  # the route started its response
        client_gone = False

        async def reject(rejection: ServiceError) -> Message:
            nonlocal answered
            if not app_started and not answered:
                answered = True
                rejection.headers.setdefault("Connection", "close")
                await send_error(scope, receive, send, rejection)
            return _DISCONNECT

        async def limited_receive() -> Message:
            nonlocal produced, body_done, client_gone, reading, entered
            if answered:
                return _DISCONNECT
            if body_done:  # e.g. a response listening for the client's disconnect
                return await receive()
            assert clock is not None
            message = await clock.receive(receive)
            if message is None:
                return await reject(
                    BodyRejected(
                        408,
                        "request_timeout",
                        clock.reason(),
                        {"timeout_seconds": self.timeout, "received_bytes": clock.received},
                    )
                )
            if message["type"] == "http.disconnect":
                client_gone = True
                return message
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            clock.received += len(chunk)
            try:
                if clock.received > self.limit:
                    raise self._too_large("request body" if more else f"request body of {clock.received} bytes")
                if inflater is not None:
                    chunk = inflater.feed(chunk, self.limit - produced)
                    if not more:
                        inflater.finish()
            except BodyRejected as rejection:
                if rejection.status == 413 and inflater is not None:
                    rejection = self._too_large("request body once decompressed")
                return await reject(rejection)
            produced += len(chunk)
            # A body without a length (chunked), or inflated past it, is reserved as it grows and never waits: a
            # half-read body must not sit on memory while it waits for more.
            if (
                reservation is not None
                and produced > reservation.held
                and not reservation.try_grow(produced - reservation.held)
            ):
                return await reject(reservation.budget.overloaded(produced, "the request body"))
            if not more:
                body_done = True
                clock.stop()
                if reading:  # the body is here: from now on the request counts as in flight
                    reading = False
                    admission.end_read(client)
                    refusal = admission.enter()
                    if refusal is not None:
                        return await reject(refusal)
                    entered = True
            return {"type": "http.request", "body": chunk, "more_body": more}

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if answered:
                return  # ours went out already: drop the route's answer
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            if reservation is not None:
                _state(scope)[MEMORY_STATE] = reservation
                if length is not None and not reservation.try_grow(length):
                    try:
                        await reservation.grow(length, "the request body")
                    except ServiceError as exc:
                        await send_error(scope, receive, send, exc)
                        return
            clock = _BodyClock(self.timeout, self.grace, self.min_rate)
            await self.app(scope, limited_receive, guarded_send)
        except ClientDisconnect:
            if answered:
                return
            if client_gone and not app_started:
                await send_error(scope, receive, send, client_gone_error())
                return
            raise
        except Exception:
            if answered:
                return  # the route failed on the disconnect it was handed after our answer
            raise
        finally:
            if clock is not None:
                clock.stop()
            if reading:
                admission.end_read(client)
            if entered:
                admission.leave()
            if reservation is not None:
                reservation.release()
            images = scope.get("state", {}).get(IMAGE_MEMORY_STATE)
            if images is not None:
                images.release()
