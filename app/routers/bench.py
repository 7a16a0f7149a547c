"""Benchmark ceilings (mounted only when `AE_BENCH_ENDPOINTS` is true, never in the OpenAPI schema).

- `POST /bench/noop-raw`: reads the body (with the same bounded reader as the inference routes) and answers with
  the same bytes, parsing nothing: what the HTTP stack, the middleware and FastAPI's routing alone allow.
- `POST /bench/noop-parse`: also parses the body into an array with the parser the `/v1` routes use
  (`application/json` -> `json_tensor`, `application/x-npy` -> `npy_tensor`, big bodies off the event loop as
  `app.inputs` does), then answers with the same bytes: the ceiling once the request format is paid for.

`bench/` drives both with the same payloads as the real routes; the gap between them and a real route is the
cost of the model, the batcher and the response encoding.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.codecs import JSON, NPY, json_tensor, media_type, npy_tensor
from app.deps import SettingsDep
from app.errors import UnsupportedMediaType
from app.hotpath import HotRoute
from app.inputs import PARSE_ON_LOOP_BINARY_BYTES, PARSE_ON_LOOP_JSON_BYTES, read_body

router = APIRouter(prefix="/bench", tags=["bench"], include_in_schema=False)


@router.post("/noop-raw")
async def noop_raw(request: Request, settings: SettingsDep) -> Response:
    """Read the body and echo it unparsed."""
    body = await read_body(request, settings.max_body_bytes)
    return Response(body, media_type=request.headers.get("content-type") or "application/octet-stream")


@router.post("/noop-parse")
async def noop_parse(request: Request, settings: SettingsDep) -> Response:
    """Read and parse the body as `/v1` does (JSON or .npy), then echo it."""
    ctype = media_type(request.headers.get("content-type"))
    if ctype not in (JSON, NPY):
        raise UnsupportedMediaType(f"send {JSON} or {NPY}", {"accepted": f"{JSON}, {NPY}"})
    body = await read_body(request, settings.max_body_bytes)

    def parse() -> np.ndarray:
        return npy_tensor(body, settings.max_batch_rows) if ctype == NPY else json_tensor(body, settings.max_batch_rows)

    if len(body) < (PARSE_ON_LOOP_BINARY_BYTES if ctype == NPY else PARSE_ON_LOOP_JSON_BYTES):
        parse()
    else:
        await request.app.state.offload.run(parse)
    return Response(body, media_type=ctype)


async def _hot_noop_raw(request: Request) -> Response:
    return await noop_raw(request, request.app.state.settings)


async def _hot_noop_parse(request: Request) -> Response:
    return await noop_parse(request, request.app.state.settings)


HOT_ROUTES = [HotRoute("/bench/noop-raw", _hot_noop_raw), HotRoute("/bench/noop-parse", _hot_noop_parse)]
"""The ceilings take the same hot path as the inference routes (app/hotpath.py): what they measure is then the
HTTP stack our routes actually run on."""
