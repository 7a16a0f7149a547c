"""The one place errors become HTTP responses.

`install_error_handlers` maps the core's `ServiceError`s (app/core/errors.py), FastAPI's validation errors,
Starlette's HTTP errors and anything unexpected, through `render_error`, to one JSON shape per protocol:
`{"error": {"type": ..., "message": ..., "details": ...}}`, and on the Open Inference Protocol's `/v2` routes its
`{"error": "<message>"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.core.errors import ServiceError

log = logging.getLogger("app.errors")


def error_body(type_: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"error": {"type": type_, "message": message, "details": details or {}}})


def error_response(
    status: int, type_: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(type_, message, details), status_code=status, media_type="application/json", headers=headers
    )


V2_PREFIX = "/v2"


def is_v2_path(path: str) -> bool:
    """Whether `path` is an Open Inference Protocol route (`/v2` or below), whose errors have the protocol's shape."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def route_path(scope: Mapping[str, Any]) -> str:
    """The request path as the routes see it, without the `--root-path` prefix (uvicorn puts the root path in
    front of `path`), so that `/v2` is recognised behind a proxy too."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def render_error(
    path: str,
    status: int,
    type_: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The one function that turns an error into a response in the shape the route's protocol uses.

    Paths under `/v2` get the Open Inference Protocol's `{"error": "<message>"}` (tritonclient and the KServe
    SDK build their exceptions from that field); every other path gets `{"error": {"type", "message", "details"}}`.
    Handlers and middleware (body limits, timeouts, overload, ...) all answer through here.
    """
    body = orjson.dumps({"error": message}) if is_v2_path(path) else error_body(type_, message, details)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    request.scope.setdefault("state", {})["error_type"] = exc.type
    return render_error(route_path(request.scope), exc.status, exc.type, exc.message, exc.details, exc.headers)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "field": ".".join(str(part) for part in err.get("loc", ())),
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else str(first["message"])
    request.scope.setdefault("state", {})["error_type"] = "invalid_request"
    return render_error(route_path(request.scope), 422, "invalid_request", message, {"errors": problems})


_STATUS_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _STATUS_TYPES.get(exc.status_code, "http_error")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    request.scope.setdefault("state", {})["error_type"] = type_
    return render_error(route_path(request.scope), exc.status_code, type_, message, {}, dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every failure on our routes the one error shape."""
    handlers: dict[type[Exception], Callable[[Request, Exception], Response]] = {
        ServiceError: _service_error,
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
