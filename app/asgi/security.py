"""Optional API-key authentication and CORS, both off unless configured.

- `ApiKeyMiddleware` (`AE_API_KEY` set): every request needs `Authorization: Bearer <key>` (compared in constant
  time), except the paths in `AE_API_KEY_EXEMPT_PATHS` (health and metrics by default, so probes and scrapers need
  no secret). A missing or wrong key is a 401 with `WWW-Authenticate: Bearer`, in the route's error shape. The
  calls that change what serves (load, unload, promote: `is_control_path`) need the key whatever the exemptions
  say.
- CORS (`AE_CORS_ORIGINS` set): Starlette's CORS middleware for the listed origins, methods GET/POST, the request
  headers our clients send, and our informative response headers exposed. Unset: no CORS headers at all, so
  browsers on other origins cannot read the answers (closed by default). A refused preflight is a JSON 400.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import render_error, route_path
from app.asgi.admission import BodyRejected, send_error
from app.settings import Settings

CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Content-Encoding", "Accept", "X-Request-ID")
CORS_EXPOSE_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "X-Model",
    "X-Model-Version",
    "X-Task",
    "X-Score",
    "X-Image-Size",
    "X-Model-Input-Size",
    "X-Resize",
    "X-Preprocess",
    "X-Inverted",
)


CONTROL_PATH = re.compile(
    r"^/v2/repository/models/[^/]+/(load|unload)$|^/v1/models/[^/]+/versions/[^/]+/(load|unload|promote)$"
)
"""The model-control calls that change what serves (app/api/v2/repository.py, app/api/v1/control.py)."""


def is_control_path(path: str) -> bool:
    """Whether `path` loads, unloads or promotes a model: never exempt from the API key."""
    return CONTROL_PATH.match(path) is not None


def path_matches(path: str, patterns: Sequence[str]) -> bool:
    """`path` equals a pattern, or starts with a pattern ending in `*` (without the `*`)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    value = Headers(scope=scope).get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class ApiKeyMiddleware:
    """401 unless the request carries the API key as a bearer token (exempt paths pass freely)."""

    def __init__(self, app: ASGIApp, api_key: str, exempt_paths: Sequence[str]) -> None:
        self.app = app
        self.key = api_key.encode()
        self.exempt = list(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if scope["type"] != "http" or (path_matches(path, self.exempt) and not is_control_path(path)):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and hmac.compare_digest(token.encode(), self.key):
            await self.app(scope, receive, send)
            return
        problem = "missing API key" if token is None else "invalid API key"
        challenge = 'Bearer realm="ae-serve"' + ("" if token is None else ', error="invalid_token"')
        unauthorized = BodyRejected(
            401,
            "unauthorized",
            f"{problem}: send the header 'Authorization: Bearer <key>'",
            {},
            {"WWW-Authenticate": challenge},
        )
        await send_error(scope, receive, send, unauthorized)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware whose refused preflight answers in JSON, like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        reason = bytes(response.body).decode()
        return render_error("/", response.status_code, "cors_rejected", reason, {}, headers)


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of the CORS middleware for the configured origins."""
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": list(CORS_ALLOW_HEADERS),
        "expose_headers": list(CORS_EXPOSE_HEADERS),
        "max_age": 600,
    }


def security_middleware(settings: Settings) -> list[Middleware]:
    """CORS (outer) and the API-key check, each when configured."""
    stack = []
    if settings.cors_origins:
        stack.append(Middleware(JsonCORSMiddleware, **cors_options(settings.cors_origins)))
    if settings.api_key is not None:
        stack.append(
            Middleware(
                ApiKeyMiddleware,
                api_key=settings.api_key.get_secret_value(),
                exempt_paths=settings.api_key_exempt_paths,
            )
        )
    return stack
