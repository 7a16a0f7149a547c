"""Benchmark ceilings (mounted only when `AE_BENCH_ENDPOINTS` is true, never in the OpenAPI schema).

- `POST /bench/noop-raw`: reads the body (with the same bounded reader as the inference routes) and answers with
  the same bytes, parsing nothing: what the HTTP stack, the middleware and FastAPI's routing alone allow.
- `POST /bench/noop-parse`: also parses the body into an array with the parser the `/v1` routes use
  (`application/json` -> `json_tensor`, `application/x-npy` -> `npy_tensor`, big bodies off the event loop as
  `app.api.inputs` does), then answers with the same bytes: the ceiling once the request format is paid for.

`bench/` drives both with the same payloads as the real routes; the gap between them and a real route is the
cost of the model, the batcher and the response encoding.
"""

from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.responses import Response

from app.api.context import AppContext
from app.api.endpoints import Endpoint
from app.api.formats import JSON, NPY, json_tensor, media_type, npy_tensor
from app.api.inputs import PARSE_ON_LOOP_BINARY_BYTES, PARSE_ON_LOOP_JSON_BYTES, read_body
from app.core.errors import UnsupportedMediaType


async def noop_raw(request: Request, ctx: AppContext) -> Response:
    """Read the body and echo it unparsed."""
    body = await read_body(request)
    return Response(body, media_type=request.headers.get("content-type") or "application/octet-stream")


async def noop_parse(request: Request, ctx: AppContext) -> Response:
    """Read and parse the body as `/v1` does (JSON or .npy), then echo it."""
    ctype = media_type(request.headers.get("content-type"))
    if ctype not in (JSON, NPY):
        raise UnsupportedMediaType(f"send {JSON} or {NPY}", {"accepted": f"{JSON}, {NPY}"})
    body = await read_body(request)

    def parse() -> np.ndarray:
        return npy_tensor(body, ctx.limits) if ctype == NPY else json_tensor(body, ctx.limits)

    if len(body) < (PARSE_ON_LOOP_BINARY_BYTES if ctype == NPY else PARSE_ON_LOOP_JSON_BYTES):
        parse()
    else:
        await ctx.offload.run(parse)
    return Response(body, media_type=ctype)


_HIDDEN = {"include_in_schema": False}
ENDPOINTS = [
    Endpoint(
        "POST", "/bench/noop-raw", "noop_raw", noop_raw, "Echo the body", tags=["bench"], hot=True, openapi=_HIDDEN
    ),
    Endpoint(
        "POST",
        "/bench/noop-parse",
        "noop_parse",
        noop_parse,
        "Parse and echo",
        tags=["bench"],
        hot=True,
        openapi=_HIDDEN,
    ),
]
"""The ceilings take the same hot path as the inference routes (app/asgi/hotpath.py): what they measure is then the
HTTP stack our routes actually run on."""
