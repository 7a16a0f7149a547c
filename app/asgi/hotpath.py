"""The hot path: the inference routes answered without FastAPI's per-request machinery.

For every request FastAPI walks the included routers' path regexes, solves the route's dependencies (for the
inference routes: the app's singletons), wraps the call in two `AsyncExitStack`s and the exception middleware.
Under load on 1-row requests that was about a fifth of the event loop's time (py-spy, bench/README.md). This
middleware, the innermost one, answers the hot routes itself: a lookup of the path's segments, the route's own
handler called with the path parameters, and the app's own exception handlers for what it raises.

Everything else passes through to FastAPI, and so does every hot-route request the fast path does not take:
a method other than POST, and, on routes with query options (`HotRoute.takes_query`), any query string, so
that FastAPI validates `?preprocess=` and `?invert=` exactly as before. The routes stay registered with FastAPI
too (the OpenAPI schema and the fallback). Whatever sits outside this middleware (request context, logs and
metrics, CORS, API key, in-flight cap, body limits, disconnect watch) applies to both paths alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.context import context_of
from app.api.endpoints import Endpoint
from app.api.errors import route_path

HotHandler = Callable[..., Awaitable[Response]]
"""`handler(request, **path_params) -> Response`."""


@dataclass(frozen=True)
class HotRoute:
    """A POST route the hot path answers: its path template (as registered with FastAPI) and handler."""

    path: str
    handler: HotHandler
    takes_query: bool = False
    """The route has query options: requests with a query string go through FastAPI, which validates them."""


@dataclass(frozen=True)
class _Template:
    path: str  # what the request context middleware labels metrics and logs with (`scope["route"].path`)
    segments: tuple[str | None, ...]  # literal segments, None for a `{parameter}`
    names: tuple[str, ...]  # parameter names, in order
    route: HotRoute


def _compile(route: HotRoute) -> _Template:
    segments: list[str | None] = []
    names: list[str] = []
    for part in route.path.strip("/").split("/"):
        if part.startswith("{") and part.endswith("}"):
            segments.append(None)
            names.append(part[1:-1])
        else:
            segments.append(part)
    return _Template(route.path, tuple(segments), tuple(names), route)


class HotPathMiddleware:
    """Answers POSTs to the hot routes directly; every other request goes on to FastAPI."""

    def __init__(self, app: ASGIApp, routes: Iterable[HotRoute]) -> None:
        self.app = app
        self.by_length: dict[int, list[_Template]] = {}
        for template in map(_compile, routes):
            self.by_length.setdefault(len(template.segments), []).append(template)
        self._handlers: dict[type[BaseException], Callable[..., Any] | None] = {}

    def match(self, path: str) -> tuple[_Template, dict[str, str]] | None:
        """The hot route of a request path, with its path parameters (None: not a hot route)."""
        parts = path.strip("/").split("/") if path.startswith("/") and not path.endswith("/") else None
        if not parts:
            return None
        for template in self.by_length.get(len(parts), ()):
            values: list[str] = []
            for literal, part in zip(template.segments, parts, strict=True):
                if literal is None:
                    if not part:
                        break
                    values.append(part)
                elif literal != part:
                    break
            else:
                return template, dict(zip(template.names, values, strict=True))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = self.match(route_path(scope))
        if found is None or (found[0].route.takes_query and scope.get("query_string")):
            await self.app(scope, receive, send)
            return
        template, params = found
        scope["route"] = template
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await template.route.handler(request, **params)
        except Exception as exc:
            handler = self._handler_for(scope, type(exc))
            if handler is None:
                raise  # the request context middleware answers 500 and logs it
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    def _handler_for(self, scope: Scope, kind: type[BaseException]) -> Callable[..., Any] | None:
        """The app's exception handler for `kind` (the closest registered base class), as FastAPI would pick."""
        if kind not in self._handlers:
            registered: Mapping[Any, Callable[..., Any]] = scope["app"].exception_handlers
            self._handlers[kind] = next((registered[base] for base in kind.__mro__ if base in registered), None)
        return self._handlers[kind]


def _hot_call(endpoint: Endpoint) -> HotRoute:
    handler = endpoint.handler
    defaults = {p.name: p.default for p in endpoint.params if p.is_query}
    fixed = {**endpoint.bound, **defaults}

    async def call(request: Request, **path_params: str) -> Response:
        return await handler(request, context_of(request), **fixed, **path_params)

    return HotRoute(endpoint.path, call, takes_query=bool(defaults))


def hot_routes(endpoints: Iterable[Endpoint]) -> list[HotRoute]:
    """The fast dispatcher's routes: the hot endpoints, calling the same handlers."""
    return [_hot_call(endpoint) for endpoint in endpoints if endpoint.hot]
