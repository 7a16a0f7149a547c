"""uvicorn's HTTP/1.1 protocol (httptools) with bounds on the request *head*, which no ASGI middleware can see.

uvicorn parses the request line and headers before the app is called, with no deadline and no size limit: a
client that trickles or stalls its head keeps its connection for ever, and a multi-megabyte header is buffered
whole. `BoundedHttpToolsProtocol` adds both:

- the head must be complete within `AE_HEAD_TIMEOUT_SECONDS` of the connection opening (or of the first byte
  of a later request on a kept-alive connection; idle time between requests is uvicorn's keep-alive timeout):
  else 408 and the connection is closed (a connection that sent nothing at all is just closed);
- the head may hold at most `AE_MAX_HEAD_BYTES`: else 431 and the connection is closed.

Two more things uvicorn's protocol does not do: a request whose client closes the connection (or half-closes
it, `shutdown(SHUT_WR)`, as `nc -N` does) before its answer is sent is marked, so that it is logged and counted
as 499 rather than as the 200 nobody received; and `close_idle_connections()`, called when the drain starts
(app/runtime/lifecycle.py), closes every kept-alive connection that is between requests, before the listener closes.

A head httptools cannot parse (a bad request line, `Content-Length: abc`, a control character in a header) gets
uvicorn's 400, but in our JSON error shape (`malformed_request`) rather than its plain text. Every answer here is
JSON in our error shape (the path is not known yet). `python -m app` selects this protocol.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.api.errors import error_body
from app.settings import Settings, get_settings

PROTOCOL = "app.server.protocol:BoundedHttpToolsProtocol"
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


HEAD_LIMITS_STATE = "ae_head_limits"
"""The key of the `HeadLimits` in the lifespan state: the app's lifespan publishes them (built from the settings
`create_app` was given) and uvicorn hands that state to every connection's protocol."""


@dataclass(frozen=True)
class HeadLimits:
    """The request head's deadline and size limit."""

    timeout_seconds: float
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(settings.head_timeout_seconds, settings.max_head_bytes)


_SERVERS: weakref.WeakSet[ServerState] = weakref.WeakSet()
"""uvicorn's state of each server of this process whose connections use this protocol (one per process, or one
per worker process): what `close_idle_connections` walks. Process-wide, as the signal that starts the drain."""


def close_idle_connections() -> int:
    """Close every kept-alive connection between two requests (the drain has started); returns how many."""
    closed = 0
    for state in list(_SERVERS):
        for connection in list(state.connections):
            if isinstance(connection, BoundedHttpToolsProtocol) and connection.close_if_idle():
                closed += 1
    return closed


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol with a deadline and a size limit on each request head, an answer after a half-close,
    and a way to close it when idle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(HEAD_LIMITS_STATE)
        if not isinstance(limits, HeadLimits):  # no lifespan ran (uvicorn --lifespan off): the environment's
            limits = HeadLimits.from_settings(get_settings())
        self._head_timeout = limits.timeout_seconds
        self._max_head = limits.max_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False
        self._receiving = False  # between the first byte of a request and its end
        _SERVERS.add(self.server_state)

    def _arm(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        if self._head_timeout > 0:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            end = data.find(b"\r\n\r\n")
            head_bytes = self._head_bytes + (len(data) if end < 0 else end + 4)
            if head_bytes > self._max_head:
                self._refuse(431, "request_header_too_large", f"the request head exceeds {self._max_head} bytes")
                return
            self._head_bytes = head_bytes
        super().data_received(data)

    def on_message_begin(self) -> None:
        if not self._in_head:  # a later request on a kept-alive connection
            self._arm()
        self._receiving = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._receiving = False
        super().on_message_complete()

    def eof_received(self) -> bool | None:
        # The client will send nothing more (a half-close): mark the request now, not only when the transport is
        # gone, so that an answer the app is about to send is known to go nowhere.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope.setdefault("state", {})["client_gone"] = True  # type: ignore[typeddict-item]
        return super().eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        # The client closed (or half-closed: it will send nothing more, and Go's and nginx's servers take that as
        # the client leaving too) before its answer was sent: whatever the app sends now goes nowhere. Say so in
        # the request's state, so that the request is logged and counted as 499, not as the 200 nobody received.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope.setdefault("state", {})["client_gone"] = True  # type: ignore[typeddict-item]
        self._disarm()
        super().connection_lost(exc)

    def close_if_idle(self) -> bool:
        """Close the connection if it is between requests (True); a request arriving or running is left alone."""
        if self.transport.is_closing() or self._receiving:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False
        if self.pipeline:
            return False
        self._disarm()
        self.transport.close()
        return True

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:  # nothing sent at all: an idle connection, closed quietly
            self._disarm()
            if not self.transport.is_closing():
                self.transport.close()
            return
        self._refuse(408, "request_timeout", f"the request head did not arrive within {self._head_timeout:g} s")

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when httptools rejects the bytes (its `msg` is a fixed "Invalid HTTP request received.").
        if self.cycle is not None and self.cycle.response_started:  # broken chunked framing mid-answer: just close
            self._disarm()
            self.transport.close()
            return
        self._refuse(
            400,
            "malformed_request",
            "the HTTP request could not be parsed (request line, a header, Content-Length or chunked framing); "
            "the connection is closed",
        )

    def _refuse(self, status: int, type_: str, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = error_body(type_, message, {"limit": self._max_head} if status == 431 else {})
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()
