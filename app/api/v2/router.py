"""Thin routes of the Open Inference Protocol (KServe V2 / Triton HTTP): parse -> data plane -> encode.

The infer body is read raw whatever its Content-Type (tritonclient sends none), bounded by
`AE_MAX_BODY_BYTES`; errors on every `/v2` route come out as `{"error": "<message>"}` (see
`app.errors.render_error`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.context import AppContext
from app.api.deps import EngineDep, LifecycleDep, RegistryDep, SettingsDep, StatisticsDep
from app.api.endpoints import Endpoint, Param
from app.api.formats import to_json
from app.api.inputs import PARSE_ON_LOOP_BINARY_BYTES, PARSE_ON_LOOP_JSON_BYTES, read_body, reserve_parsing
from app.api.v2 import dataplane
from app.api.v2.protocol import BINARY_CONTENT_TYPE, HEADER_LENGTH, JSON_CONTENT_TYPE, encode_response, parse_request
from app.api.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelConfigResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ModelStatisticsResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    V2ErrorResponse,
)
from app.api.v2.statistics import RequestTimer
from app.core.engine import InferenceEngine
from app.core.errors import ModelUnavailable, UnsupportedMediaType
from app.core.registry import ModelRegistry
from app.settings import Settings

TAG = "open inference protocol (v2)"
router = APIRouter(prefix="/v2", tags=[TAG])

ModelName = Annotated[
    str,
    Path(
        description="`<model>.<encoder|decoder|full|gray>`, or `<model>` for its full graph (`GET /v1/models` lists "
        "the models)",
        examples=["dense.encoder"],
    ),
]
ModelVersion = Annotated[
    str, Path(description="a version of the model (`GET /v1/models/{name}/versions` lists them)", examples=["1"])
]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "malformed request: JSON, header length, datatype, data size, unknown input or output",
        404: "unknown model, graph or version",
        413: "body or batch over the limits",
        422: "invalid request: wrong shape, values outside the model's range or non-finite",
        415: "a Content-Type other than none, application/json, application/octet-stream or curl -d's default",
        500: "the model failed or produced invalid output",
        503: "not ready: the model (or a required model) did not load",
    }
    return {s: {"model": V2ErrorResponse, "description": described[s]} for s in statuses}


class TensorResponse(Response):
    """An inference response sent as its buffers (JSON header, then each binary tensor) without joining them."""

    def __init__(self, buffers: Sequence[bytes | memoryview], header_length: int | None) -> None:
        self.buffers = list(buffers)
        self.status_code = 200
        self.background = None
        self.media_type = JSON_CONTENT_TYPE if header_length is None else BINARY_CONTENT_TYPE
        self.body = b""
        headers = {"content-length": str(sum(len(b) for b in self.buffers))}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.buffers) - 1
        for index, buffer in enumerate(self.buffers):
            await send({"type": "http.response.body", "body": buffer, "more_body": index < last})


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` substituted in place (`openapi_extra` schemas do not get their
    nested models registered under `components`, so a `$ref` there would dangle)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return dict(walk(schema))


def _stats_json(entries: list[dict[str, Any]]) -> Response:
    return _json(ModelStatisticsResponse.model_validate({"model_stats": entries}))


def _json(body: Any, status: int = 200) -> Response:
    return Response(to_json(body.model_dump(exclude_none=True)), status_code=status, media_type=JSON_CONTENT_TYPE)


# -- server -------------------------------------------------------------------------------------------------
@router.get("", response_model=ServerMetadataResponse, summary="Server metadata")
async def get_server_metadata() -> Response:
    """Name, version and the protocol extensions offered (`binary_tensor_data`, `model_configuration`,
    `statistics`, `model_repository`)."""
    return _json(dataplane.server_metadata())


@router.get("/health/live", response_model=ServerLiveResponse, summary="Server liveness")
async def get_server_live() -> Response:
    """200 `{"live": true}` while the process answers."""
    return _json(ServerLiveResponse(live=True))


@router.get("/health/ready", response_model=ServerReadyResponse, summary="Server readiness", responses=_errors(503))
async def get_server_ready(registry: RegistryDep, lifecycle: LifecycleDep) -> Response:
    """200 `{"ready": true, "models": {name: {version: state}}}` when every required model serves (never with no
    model), else 503 naming what is not ready (also while the process drains before shutting down)."""
    if lifecycle.draining:
        raise ModelUnavailable("not ready: shutting down (draining)", {"not_ready": {"*": "draining"}})
    dataplane.check_ready(registry)
    return _json(ServerReadyResponse(ready=True, models=dataplane.version_states(registry)))


# -- models (each route also under /versions/{version}) -----------------------------------------------------
async def _metadata(registry: ModelRegistry, name: str, version: str | None) -> Response:
    return _json(dataplane.model_metadata(dataplane.resolve(registry, name, version)))


async def _ready(registry: ModelRegistry, name: str, version: str | None) -> Response:
    dataplane.resolve(registry, name, version)
    return _json(ModelReadyResponse(name=name, ready=True))


async def _config(
    registry: ModelRegistry, settings: Settings, engine: InferenceEngine, name: str, version: str | None
) -> Response:
    return _json(dataplane.model_config(dataplane.resolve(registry, name, version), settings, engine))


# tritonclient sends no Content-Type; other clients send JSON or octet-stream (binary extension), and `curl -d`,
# what the KServe and Triton docs use, sends its default form type with a JSON body. Anything else (text/csv,
# multipart, an image) is a client mistake, named in a 415 rather than parsed as JSON.
INFER_CONTENT_TYPES = (JSON_CONTENT_TYPE, BINARY_CONTENT_TYPE)
CURL_DEFAULT_CONTENT_TYPE = "application/x-www-form-urlencoded"


def check_content_type(header: str | None) -> None:
    """415 unless the infer body's Content-Type is absent, JSON, octet-stream or curl's default (parameters ok)."""
    if header is None or not header.strip():
        return
    media = header.split(";", 1)[0].strip().lower()
    if media not in INFER_CONTENT_TYPES and media != CURL_DEFAULT_CONTENT_TYPE:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not accepted on infer; send {' or '.join(INFER_CONTENT_TYPES)} (or none)",
            {"accepted": list(INFER_CONTENT_TYPES)},
        )


async def infer(request: Request, ctx: AppContext, *, name: str, version: str | None = None) -> Response:
    """Run the model (that version of it, when given) on JSON or binary tensors; binary outputs make an
    `application/octet-stream` answer."""
    registry, engine = ctx.registry, ctx.engine
    statistics = ctx.v2_statistics
    timer = RequestTimer()
    entry, _ = dataplane.locate(registry, name)
    state = request.state
    state.model = entry.name
    state.task = "v2"
    model = dataplane.resolve(registry, name, version)
    state.model_version = model.version
    check_content_type(request.headers.get("content-type"))
    # Counted in (no await since the lookup): an unload waits for this request before it frees the sessions.
    model.entry.in_flight += 1
    try:
        body = await read_body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = int(header_length) if header_length and header_length.isdigit() else len(body)
        await reserve_parsing(request, body, min(json_bytes, len(body)))

        def prepare() -> tuple[dataplane.InferPlan, str | None]:
            parsed = parse_request(body, header_length)
            return dataplane.plan_inference(model, parsed, ctx.limits), parsed.id

        started = time.perf_counter_ns()
        on_loop = json_bytes < PARSE_ON_LOOP_JSON_BYTES and len(body) < PARSE_ON_LOOP_BINARY_BYTES
        plan, request_id = prepare() if on_loop else await ctx.offload.run(prepare)
        timer.rows, timer.compute_input = plan.rows, time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        outputs = await dataplane.run_inference(model, plan, engine)
        timer.compute_infer = time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        buffers, header = encode_response(model.name, model.version, request_id, outputs)
        timer.compute_output = time.perf_counter_ns() - started
    except Exception:
        statistics.record(model.name, model.version, timer, ok=False)
        raise
    finally:
        model.entry.in_flight -= 1
    statistics.record(model.name, model.version, timer, ok=True)
    return TensorResponse(buffers, header)


_METADATA: dict[str, Any] = {"response_model": ModelMetadataResponse, "responses": _errors(404, 422, 503)}
_READY: dict[str, Any] = {"response_model": ModelReadyResponse, "responses": _errors(404, 422, 503)}
_CONFIG: dict[str, Any] = {"response_model": ModelConfigResponse, "responses": _errors(404, 422, 503)}
_INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "JSON tensors; or, with the binary tensor data extension, this JSON followed by raw "
        "little-endian tensors, its length in the `Inference-Header-Content-Length` header (any or no "
        "Content-Type)",
        "content": {
            JSON_CONTENT_TYPE: {
                "schema": _inline_refs(InferenceRequest.model_json_schema()),
                "examples": {
                    "encode one digit (JSON in and out)": {
                        "value": {
                            "id": "req-1",
                            "inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}],
                            "outputs": [{"name": "z"}],
                        }
                    },
                    "decode a code (nested data)": {
                        "value": {"inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [[0.0] * 32]}]}
                    },
                },
            },
            BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER: dict[str, Any] = {
    "openapi_extra": _INFER_OPENAPI,
    "response_model": None,
    "responses": {
        200: {
            "model": InferenceResponse,
            "description": "JSON outputs; with binary outputs the JSON header (length in "
            "`Inference-Header-Content-Length`) is followed by the raw tensors",
            "content": {BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_errors(400, 404, 413, 415, 422, 500, 503),
    },
}


_STATS: dict[str, Any] = {"response_model": ModelStatisticsResponse, "responses": _errors(404, 422, 503)}


@router.get("/models/stats", summary="Inference statistics of every model (Triton)", **_STATS)
async def get_all_statistics(registry: RegistryDep, statistics: StatisticsDep) -> Response:
    """Triton's statistics extension for every served V2 model (per worker process); perf_analyzer reads it."""
    return _stats_json(statistics.snapshot(dataplane.served_models(registry)))


@router.get("/models/{name}/stats", summary="Inference statistics (Triton)", **_STATS)
async def get_model_statistics(name: ModelName, registry: RegistryDep, statistics: StatisticsDep) -> Response:
    """Requests, rows, and time decoding, in the engine and encoding, for one V2 model, each version that serves
    (per worker process)."""
    model = dataplane.resolve(registry, name)
    return _stats_json(statistics.snapshot([(model.name, version) for version in model.versions]))


@router.get("/models/{name}/versions/{version}/stats", summary="Inference statistics (Triton, a version)", **_STATS)
async def get_model_version_statistics(
    name: ModelName, version: ModelVersion, registry: RegistryDep, statistics: StatisticsDep
) -> Response:
    """Statistics of that version of the model."""
    model = dataplane.resolve(registry, name, version)
    return _stats_json(statistics.snapshot([(model.name, model.version)]))


@router.get("/models/{name}", summary="Model metadata", **_METADATA)
async def get_model_metadata(name: ModelName, registry: RegistryDep) -> Response:
    """Tensors with the protocol's datatypes; the batch axis and other dynamic axes are -1."""
    return await _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (a version)", **_METADATA)
async def get_model_version_metadata(name: ModelName, version: ModelVersion, registry: RegistryDep) -> Response:
    """Tensors with the protocol's datatypes; 404 when the model has no such version."""
    return await _metadata(registry, name, version)


@router.get("/models/{name}/ready", summary="Model readiness", **_READY)
async def get_model_ready(name: ModelName, registry: RegistryDep) -> Response:
    """200 `{"name", "ready": true}` when the model serves; 503 when it did not load; 404 when unknown."""
    return await _ready(registry, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (a version)", **_READY)
async def get_model_version_ready(name: ModelName, version: ModelVersion, registry: RegistryDep) -> Response:
    """200 `{"name", "ready": true}` when that version serves; 503 when it did not load; 404 when unknown."""
    return await _ready(registry, name, version)


@router.get("/models/{name}/config", summary="Model configuration (Triton)", **_CONFIG)
async def get_model_config(
    name: ModelName, registry: RegistryDep, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Triton's model configuration (platform, max_batch_size, dims without the batch axis, batching)."""
    return await _config(registry, settings, engine, name, None)


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (Triton, a version)", **_CONFIG)
async def get_model_version_config(
    name: ModelName, version: ModelVersion, registry: RegistryDep, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Triton's model configuration of that version."""
    return await _config(registry, settings, engine, name, version)


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v2/models/{name}/infer",
        "infer",
        infer,
        "Inference",
        "Run the model on JSON or binary tensors; binary outputs make an `application/octet-stream` answer.",
        tags=[TAG],
        params=[Param("name", ModelName)],
        hot=True,
        openapi=_INFER,
    ),
    Endpoint(
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        "infer_version",
        infer,
        "Inference (a version)",
        "Run that version of the model (404 when it has no such version); `model_version` names it.",
        tags=[TAG],
        params=[Param("name", ModelName), Param("version", ModelVersion)],
        hot=True,
        openapi=_INFER,
    ),
]
"""Inference, through the endpoint table (app/api/endpoints.py): FastAPI documents it, the hot path serves it."""
