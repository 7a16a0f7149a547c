"""The endpoint table: each HTTP operation once (method, path, handler, parameters, OpenAPI description), and the two
things built from it: the FastAPI routes that validate and document it, and the fast dispatcher's routes.

A handler is `async def handler(request, ctx, **params) -> Response`, with `ctx` the `AppContext` and `params` the
path parameters and query options. FastAPI calls it through a generated function whose signature declares those
parameters (so they are validated and documented as usual); the hot path (app/asgi/hotpath.py) calls the very same
handler without FastAPI's routing and dependency solving, for POSTs that carry no query string, with the query
options' defaults (`app.asgi.hotpath.hot_routes` builds its routes from the table). A protocol adds its operations
by listing `Endpoint`s (`ENDPOINTS` in its router module); `endpoint_table` collects them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from app.api.context import AppContext
from app.api.deps import ContextDep

Handler = Callable[..., Awaitable[Response]]
"""`handler(request, ctx, **params) -> Response`."""


@dataclass(frozen=True)
class Param:
    """A path parameter (no default) or a query option (with its default), typed and described for FastAPI
    (`Annotated[str, Path(...)]`, `Annotated[bool | None, Query(...)]`)."""

    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty

    @property
    def is_query(self) -> bool:
        return self.default is not inspect.Parameter.empty


@dataclass(frozen=True)
class Endpoint:
    """One HTTP operation."""

    method: str
    path: str
    name: str
    handler: Handler
    summary: str
    description: str = ""
    tags: Sequence[str] = ()
    params: Sequence[Param] = ()
    bound: Mapping[str, Any] = field(default_factory=dict)
    """Fixed keyword arguments of the handler (e.g. the task): one handler serves many endpoints, no closures."""
    hot: bool = False
    """Served by the fast dispatcher (POST only) when the request has no query string."""
    openapi: Mapping[str, Any] = field(default_factory=dict)
    """More of FastAPI's route arguments: `response_model`, `responses`, `openapi_extra`, `include_in_schema`."""


def _fastapi_call(endpoint: Endpoint) -> Callable[..., Awaitable[Response]]:
    """A function FastAPI can route to: `request`, the context and the endpoint's parameters in its signature."""
    handler, bound = endpoint.handler, dict(endpoint.bound)

    async def call(request: Request, ctx: AppContext, **params: Any) -> Response:
        return await handler(request, ctx, **bound, **params)

    keyword = inspect.Parameter.KEYWORD_ONLY
    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", keyword, annotation=Request),
            inspect.Parameter("ctx", keyword, annotation=ContextDep),
            *(inspect.Parameter(p.name, keyword, annotation=p.annotation, default=p.default) for p in endpoint.params),
        ],
        return_annotation=Response,
    )
    call.__name__ = endpoint.name
    call.__doc__ = endpoint.summary
    return call


def add_routes(app: FastAPI, endpoints: Iterable[Endpoint]) -> None:
    """Register every endpoint with FastAPI (validation, the OpenAPI schema, and every request the fast
    dispatcher does not take)."""
    for endpoint in endpoints:
        app.add_api_route(
            endpoint.path,
            _fastapi_call(endpoint),
            methods=[endpoint.method],
            name=endpoint.name,
            summary=endpoint.summary,
            description=endpoint.description or None,
            tags=list(endpoint.tags) or None,
            **endpoint.openapi,
        )
