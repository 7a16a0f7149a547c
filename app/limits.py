"""Limits enforced in front of the routes, as plain ASGI middleware, before any body is buffered.

- `InFlightLimitMiddleware`: at most `max_in_flight_requests` requests at once in this worker; beyond that an
  immediate 503 `overloaded` with `Retry-After` (uvicorn's `--limit-concurrency` answers without it, in plain
  text). Health paths are exempt so that probes answer under load.
- `BodyLimitMiddleware`: the request body's size limit, decided from `Content-Length` before reading and while
  streaming (chunked bodies have no length), applied to the *decompressed* size of `Content-Encoding: gzip` /
  `deflate` bodies, which are inflated incrementally and never past the limit (a zip bomb is a 413, not an
  out-of-memory); other encodings are a 415; the whole body must arrive within `body_timeout_seconds` of the
  request's start (uvicorn has no read deadline: a stalled or trickling client would hold a slot forever) -> 408.
  A client that disconnects mid-body is recorded as 499 (nginx's convention) and releases everything.

Every answer goes through `render_error`, so it has the route's error shape (ours, or the Open Inference
Protocol's under `/v2`). When the middleware answers while the route is reading, the route sees a disconnect
and whatever it tries to send afterwards is dropped.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import render_error, route_path
from app.settings import Settings

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
"""Paths that must answer even when the service is saturated (probes, metrics scrapes)."""

SUPPORTED_ENCODINGS = ("gzip", "deflate")
_GZIP_NAMES = ("gzip", "x-gzip")
_DISCONNECT: Message = {"type": "http.disconnect"}
CLIENT_CLOSED_REQUEST = 499


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    type_: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    _state(scope)["error_type"] = type_
    response = render_error(route_path(scope), status, type_, message, details, headers)
    await response(scope, receive, send)


class InFlightLimitMiddleware:
    """Caps the requests handled at once by this worker; beyond the cap, 503 `overloaded` with Retry-After."""

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_seconds: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await send_error(
                scope,
                receive,
                send,
                503,
                "overloaded",
                f"the service is handling {self.in_flight} requests, its limit; retry after {self.retry_after} s",
                {"limit": self.max_in_flight},
                {"Retry-After": self.retry_after},
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyRejected(Exception):
    """Why the body is refused: the status, type and message of the answer."""

    def __init__(self, status: int, type_: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.details = status, type_, message, details or {}


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


class _Deadline:
    """One timer per request for the whole body (a cancel scope around every `receive()` costs ~10 us more per
    request): when it fires while the route waits for body bytes, that wait is cancelled and reports None."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._waiter: asyncio.Task[Any] | None = None
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(seconds, self._expire) if seconds > 0 else None

    def _expire(self) -> None:
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


class BodyLimitMiddleware:
    """Body size (declared, streamed, decompressed), Content-Encoding, and the body's read deadline."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_seconds: float) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.timeout = body_timeout_seconds

    def _too_large(self, what: str) -> BodyRejected:
        return BodyRejected(
            413, "payload_too_large", f"{what} exceeds the limit of {self.limit} bytes", {"limit": self.limit}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = (_header(scope, b"content-encoding") or "").strip().lower()
        declared = (_header(scope, b"content-length") or "").strip()
        inflater: Inflater | None = None
        if encoding not in ("", "identity"):
            if encoding not in (*_GZIP_NAMES, "deflate"):
                await send_error(
                    scope,
                    receive,
                    send,
                    415,
                    "unsupported_media_type",
                    f"Content-Encoding {encoding!r} is not supported; send {', '.join(SUPPORTED_ENCODINGS)} or "
                    "an uncompressed body",
                    {"accepted_encodings": list(SUPPORTED_ENCODINGS)},
                    {"Accept-Encoding": ", ".join(SUPPORTED_ENCODINGS)},
                )
                return
            inflater = Inflater(encoding)
            # The route sees the decoded body: its length is no longer the declared one.
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
            ]
        if declared.isdigit() and int(declared) > self.limit:
            rejection = self._too_large(f"request body of {int(declared)} bytes")
            await send_error(
                scope, receive, send, rejection.status, rejection.type, rejection.message, rejection.details
            )
            return

        deadline = _Deadline(self.timeout)
        received = 0  # bytes on the wire
        produced = 0  # bytes handed to the route (decoded)
        body_done = False
        answered = False  # this middleware sent the response
        app_started = False  # the route started its response
        client_gone = False

        async def reject(rejection: BodyRejected) -> Message:
            nonlocal answered
            if not app_started and not answered:
                answered = True
                await send_error(
                    scope,
                    receive,
                    send,
                    rejection.status,
                    rejection.type,
                    rejection.message,
                    rejection.details,
                    {"Connection": "close"},
                )
            return _DISCONNECT

        async def limited_receive() -> Message:
            nonlocal received, produced, body_done, client_gone
            if answered:
                return _DISCONNECT
            if body_done:  # e.g. a response listening for the client's disconnect
                return await receive()
            message = await deadline.receive(receive)
            if message is None:
                return await reject(
                    BodyRejected(
                        408,
                        "request_timeout",
                        f"the request body did not arrive within {self.timeout:g} s ({received} bytes received)",
                        {"timeout_seconds": self.timeout, "received_bytes": received},
                    )
                )
            if message["type"] == "http.disconnect":
                client_gone = True
                return message
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            received += len(chunk)
            try:
                if received > self.limit:
                    raise self._too_large("request body" if more else f"request body of {received} bytes")
                if inflater is not None:
                    chunk = inflater.feed(chunk, self.limit - produced)
                    if not more:
                        inflater.finish()
            except BodyRejected as rejection:
                if rejection.status == 413 and inflater is not None:
                    rejection = self._too_large("request body once decompressed")
                return await reject(rejection)
            produced += len(chunk)
            if not more:
                body_done = True
                deadline.stop()
            return {"type": "http.request", "body": chunk, "more_body": more}

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if answered:
                return  # ours went out already: drop the route's answer
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ClientDisconnect:
            if answered:
                return
            if client_gone and not app_started:
                await send_error(scope, receive, send, CLIENT_CLOSED_REQUEST, "client_disconnected", "client went away")
                return
            raise
        except Exception:
            if answered:
                return  # the route failed on the disconnect it was handed after our answer
            raise
        finally:
            deadline.stop()


def install_limits(app: Any, settings: Settings) -> None:
    """Add the body limits and the in-flight cap (Starlette runs the last added first: the cap, then the body)."""
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout_seconds=settings.body_timeout_seconds
    )
    app.add_middleware(
        InFlightLimitMiddleware,
        max_in_flight=settings.max_in_flight_requests,
        retry_after_seconds=settings.retry_after_seconds,
    )
