"""Per-request context as a plain ASGI middleware: request id, one JSON log line, metrics, and a JSON 500
for anything unexpected (never a stack trace to the client).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error, route_path
from app.asgi.admission import CLIENT_CLOSED_REQUEST
from app.runtime.lifecycle import Lifecycle
from app.runtime.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")

access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app.errors")


LOGGED_PATH_CHARS = 256


def _shown_path(path: str) -> str:
    """The request path as the access log shows it: at most 256 characters (a path is client input)."""
    return path if len(path) <= LOGGED_PATH_CHARS else f"{path[:LOGGED_PATH_CHARS]}...({len(path)} characters)"


class RequestIds:
    """Fresh request ids: 32 hex digits, a random per-process prefix and a counter (unique across workers and
    restarts; `uuid4()` costs an `os.urandom` call and an object per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def request_id_from(scope: Scope, ids: RequestIds) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = bytes(value).decode("latin-1").strip()
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return ids.new()


class RequestContextMiddleware:
    """Wraps every HTTP request: id in and out, latency, log line, counters."""

    def __init__(self, app: ASGIApp, metrics: Metrics, lifecycle: Lifecycle, retry_after_seconds: int = 1) -> None:
        self.app = app
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.retry_after = str(retry_after_seconds)
        self.ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope, self.ids)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        lifecycle = self.lifecycle

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                if lifecycle.draining and "connection" not in headers:
                    headers.append("Connection", "close")  # the client reconnects elsewhere
            await send(message)

        self.metrics.in_flight.inc()
        task = asyncio.current_task()
        if task is not None:
            lifecycle.running.add(task)
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if task is None or task not in lifecycle.cut_off:
                raise
            # Cut off at the shutdown deadline (app/runtime/lifecycle.py): our cancellation, answered here.
            lifecycle.cut_off.discard(task)
            if hasattr(task, "uncancel"):
                task.uncancel()
            state["error_type"] = "shutting_down"
            if not response_started:
                response = render_error(
                    route_path(scope),
                    503,
                    "shutting_down",
                    "the service is shutting down and this request did not finish in its grace period; retry",
                    {},
                    {"Retry-After": self.retry_after, "Connection": "close"},
                )
                await response(scope, receive, send_with_id)
        except Exception:
            error_log.exception(
                "unhandled error", extra={"request_id": request_id, "path": _shown_path(scope.get("path", ""))}
            )
            state["error_type"] = "internal_error"
            if not response_started:
                response = render_error(
                    route_path(scope),
                    500,
                    "internal_error",
                    f"internal error; quote request id {request_id} when reporting it",
                )
                await response(scope, receive, send_with_id)
        finally:
            if task is not None:
                lifecycle.running.discard(task)
            self.metrics.in_flight.dec()
            self._record(scope, state, request_id, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict, request_id: str, status: int, seconds: float) -> None:  # type: ignore[type-arg]
        if state.get("client_gone") and status != CLIENT_CLOSED_REQUEST:
            # The connection closed before the answer went out (app/server/protocol.py): nobody received this status.
            status, state["error_type"] = CLIENT_CLOSED_REQUEST, "client_disconnected"
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        model = state.get("model", "")
        version = state.get("model_version", "")
        method = scope.get("method", "")
        metrics = self.metrics
        metrics.child(metrics.requests, method, template, model, version, str(status)).inc()
        metrics.child(metrics.latency, template, model, version).observe(seconds)
        error_type = state.get("error_type")
        if status >= 400:
            metrics.child(metrics.errors, template, model, version, error_type or str(status)).inc()
        if not access_log.isEnabledFor(logging.INFO):
            return
        # The record is built directly: `Logger.info` would also walk the stack for the caller's file and line,
        # the same for every access line (a tenth of the cost of logging it).
        record = access_log.makeRecord(
            access_log.name,
            logging.INFO,
            __file__,
            0,
            "request",
            (),
            None,
            extra={
                "request_id": request_id,
                "method": method,
                "path": _shown_path(scope.get("path", "")),
                "route": template,
                "model": model or None,
                "version": version or None,
                "task": state.get("task"),
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "error_type": error_type,
            },
        )
        access_log.handle(record)
