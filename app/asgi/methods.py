"""HTTP method semantics FastAPI leaves out: HEAD wherever GET, OPTIONS with `Allow`, and WebSocket refused in JSON.

- `HEAD` (RFC 9110 9.3.2) is answered as the `GET` of the same path would be, without the body (uvicorn drops it
  for a HEAD request); FastAPI registers GET routes for GET only and answered 405.
- `OPTIONS` (RFC 9110 9.3.7) answers 204 with `Allow` listing the path's methods. A CORS preflight never gets
  here: the CORS middleware, further out, answers it when CORS is configured.
- A WebSocket upgrade: this service has no WebSocket endpoint. The handshake is refused with a JSON 400 through
  the ASGI WebSocket denial response where the server supports it (uvicorn does), instead of an empty 403.
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import render_error, route_path

_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ROUTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(scope: Scope) -> list[str]:
    """The methods the app's routes accept on the request's path (empty when no route matches it), asked of the
    routes themselves (`BaseRoute.matches`, which included routers answer too)."""
    routes = getattr(scope["app"], "routes", ())
    methods = set()
    for method in _ROUTED_METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            methods.add(method)
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return [m for m in _METHOD_ORDER if m in methods]


class MethodsMiddleware:
    """HEAD as GET, OPTIONS with Allow, WebSocket handshakes refused (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._refuse_websocket(scope, receive, send)
            return
        if kind != "http" or scope["method"] not in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        methods = allowed_methods(scope)
        if scope["method"] == "OPTIONS" and methods:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [(b"allow", ", ".join(methods).encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["method"] == "HEAD" and "GET" in methods:
            # Routed as the GET it mirrors; uvicorn's own copy of the scope still says HEAD and drops the body.
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        text = (
            f"no WebSocket endpoint at {route_path(scope)[:200]}: this service speaks plain HTTP (REST under /v1, "
            "the Open Inference Protocol under /v2)"
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            response = render_error(route_path(scope), 400, "websocket_not_supported", text)
            await send({"type": "websocket.http.response.start", "status": 400, "headers": response.raw_headers})
            await send({"type": "websocket.http.response.body", "body": response.body})
            return
        await send({"type": "websocket.close", "code": 1008, "reason": "no WebSocket endpoint"})
