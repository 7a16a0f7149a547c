"""Triton's `inference.GRPCInferenceService` over the app's registry, engine and V2 data plane: the same model
names (`dense`, `dense.encoder`, ...), metadata, config, checks, statistics and engine queue as `/v2`.

Each RPC runs in `_rpc`: the caller's `x-request-id` (or a fresh one) echoed in the initial metadata, a domain
error (`app.core.errors`) turned into its gRPC status with our message, the request counted in the HTTP metrics
with `method="GRPC"`, the RPC's full name as `route` and the HTTP status the same error has on `/v2` (so the
same dashboards and alerts read both). Authentication is the server's interceptor (`app/server/grpc_server.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as pb  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # type: ignore[import-untyped]

from app.api.context import AppContext
from app.api.grpc.tensors import infer_response as encode_infer_response
from app.api.grpc.tensors import parse_infer_request
from app.api.inputs import PARSE_ON_LOOP_BINARY_BYTES, PARSE_ON_LOOP_JSON_BYTES
from app.api.v2 import dataplane
from app.api.v2.protocol import OutputTensor
from app.api.v2.statistics import RequestTimer
from app.core.errors import BadRequest, ModelUnavailable, ServiceError

log = logging.getLogger("app.grpc")
access_log = logging.getLogger("app.access")

SERVICE = "inference.GRPCInferenceService"
ENDPOINT = "grpc"  # the `endpoint` label of the engine's metrics
REQUEST_ID_KEY = "x-request-id"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")  # as the HTTP side's (app/asgi/request_context.py)
STREAM_WINDOW = 64
"""Requests of one `ModelStreamInfer` stream in flight at once: they run concurrently (and batch with each other
and with every other caller), their answers go out in request order; the next request is read when one of
them is answered."""
CLIENT_CLOSED_REQUEST = 499
# A client whose deadline passes cancels the call (RST_STREAM) at its own deadline, which comes before ours: the
# timeout it propagates is what was left when it sent the call, and our clock starts when the call arrives. A
# cancellation this close to our deadline is that client's deadline, not the client going away.
DEADLINE_SLACK_SECONDS = 0.25
REFUSED_LOAD_PARAMETERS = ("config",)
"""Triton's load overrides, refused as on HTTP (`app/api/v2/repository.py`): a version is published as a folder."""

STATUS_CODES: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> Any:
    """The gRPC status of a domain error with this HTTP status (Triton's and KServe's mapping)."""
    return STATUS_CODES.get(http_status, grpc.StatusCode.UNKNOWN)


@dataclass
class _Call:
    """One RPC (or one request of a stream): what its metrics and log line need."""

    route: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    version: str = ""


class RequestIds:
    """Fresh request ids: a random per-process prefix and a counter (as the HTTP side's)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = 0

    def new(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:016x}"


def _metadata_value(context: Any, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return str(item.value)
    return None


def _cancelled(context: Any) -> tuple[int, str]:
    """How a cancelled RPC is counted: its deadline passed (504, as the engine's own timeout), or the client
    cancelled or went away (499, as on HTTP)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS:
        return 504, "deadline_exceeded"
    return CLIENT_CLOSED_REQUEST, "client_disconnected"


Handler = Callable[[Any, Any, Any, _Call], Awaitable[Any]]


def _rpc(name: str) -> Callable[[Handler], Callable[[Any, Any, Any], Awaitable[Any]]]:
    """A unary RPC with its request id, error mapping and metrics."""
    route = f"/{SERVICE}/{name}"

    def wrap(method: Handler) -> Callable[[Any, Any, Any], Awaitable[Any]]:
        async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
            call = self.begin(route, context)
            self.ctx.metrics.in_flight.inc()  # no await before the try: `record` always takes it back
            try:
                await context.send_initial_metadata(((REQUEST_ID_KEY, call.request_id),))
                response = await method(self, request, context, call)
            except ServiceError as error:
                self.record(call, error.status, error.type)
                await context.abort(status_code(error.status), error.message)
            except asyncio.CancelledError:
                self.record(call, *_cancelled(context))
                raise
            except Exception:
                log.exception("unhandled error", extra={"request_id": call.request_id, "rpc": route})
                self.record(call, 500, "internal_error")
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error; quote request id {call.request_id} when reporting it"
                )
            self.record(call, 200)
            return response

        handler.__name__ = handler.__qualname__ = name
        handler.__doc__ = method.__doc__
        return handler

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Every RPC of the service over one app's context."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.ids = RequestIds()

    # -- per call ------------------------------------------------------------------------------------------
    def begin(self, route: str, context: Any) -> _Call:
        """The call's request id: the client's `x-request-id` when it is a sane token, else a fresh one."""
        given = _metadata_value(context, REQUEST_ID_KEY)
        request_id = given.strip() if given and VALID_REQUEST_ID.match(given.strip()) else self.ids.new()
        return _Call(route, request_id)

    def record(self, call: _Call, status: int, error_type: str | None = None) -> None:
        """Count the call as the HTTP request middleware counts a request (`method="GRPC"`), and log it."""
        metrics = self.ctx.metrics
        metrics.in_flight.dec()
        seconds = time.perf_counter() - call.started
        metrics.child(metrics.requests, "GRPC", call.route, call.model, call.version, str(status)).inc()
        metrics.child(metrics.latency, call.route, call.model, call.version).observe(seconds)
        if status >= 400:
            metrics.child(metrics.errors, call.route, call.model, call.version, error_type or str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "grpc request",
                extra={
                    "request_id": call.request_id,
                    "method": "GRPC",
                    "path": call.route,
                    "status": status,
                    "model": call.model,
                    "model_version": call.version,
                    "duration_ms": round(seconds * 1000, 3),
                    **({"error_type": error_type} if error_type else {}),
                },
            )

    # -- health and metadata -------------------------------------------------------------------------------
    @_rpc("ServerLive")
    async def ServerLive(self, request: Any, context: Any, call: _Call) -> Any:
        """Live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    @_rpc("ServerReady")
    async def ServerReady(self, request: Any, context: Any, call: _Call) -> Any:
        """Ready when every required model serves, and not while the process drains before shutting down."""
        ready = not self.ctx.lifecycle.draining and self.ctx.registry.readiness().ready
        return pb.ServerReadyResponse(ready=ready)

    @_rpc("ModelReady")
    async def ModelReady(self, request: Any, context: Any, call: _Call) -> Any:
        """Ready when the model (that version) serves; NOT_FOUND for an unknown model, graph or version."""
        try:
            model = dataplane.resolve(self.ctx.registry, request.name, request.version or None)
        except ModelUnavailable:
            return pb.ModelReadyResponse(ready=False)
        call.model, call.version = model.entry.name, model.version
        return pb.ModelReadyResponse(ready=True)

    @_rpc("ServerMetadata")
    async def ServerMetadata(self, request: Any, context: Any, call: _Call) -> Any:
        """Name, version and the protocol extensions offered."""
        return json_format.ParseDict(dataplane.server_metadata().model_dump(), pb.ServerMetadataResponse())

    @_rpc("ModelMetadata")
    async def ModelMetadata(self, request: Any, context: Any, call: _Call) -> Any:
        """Tensors with the protocol's datatypes; the batch axis and other dynamic axes are -1."""
        model = self._resolve(request.name, request.version, call)
        metadata = dataplane.model_metadata(model).model_dump(exclude_none=True)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_rpc("ModelConfig")
    async def ModelConfig(self, request: Any, context: Any, call: _Call) -> Any:
        """Triton's model configuration, as on `GET /v2/models/{name}/config`."""
        model = self._resolve(request.name, request.version, call)
        config = dataplane.model_config(model, self.ctx.settings, self.ctx.engine).model_dump(exclude_none=True)
        parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return pb.ModelConfigResponse(config=parsed)

    @_rpc("ModelStatistics")
    async def ModelStatistics(self, request: Any, context: Any, call: _Call) -> Any:
        """Triton's statistics of one model (every version that serves, or the one asked for), or of every model
        when no name is given (per worker process; HTTP and gRPC requests count together)."""
        registry, statistics = self.ctx.registry, self.ctx.v2_statistics
        if not request.name:
            entries = statistics.snapshot(dataplane.served_models(registry))
        else:
            model = self._resolve(request.name, request.version, call)
            versions = [model.version] if request.version else list(model.versions)
            entries = statistics.snapshot([(model.name, version) for version in versions])
        return json_format.ParseDict({"model_stats": entries}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    def _resolve(self, name: str, version: str, call: _Call) -> dataplane.V2Model:
        entry, _ = dataplane.locate(self.ctx.registry, name)
        call.model = entry.name  # a registry name, never the client's text (label values stay bounded)
        model = dataplane.resolve(self.ctx.registry, name, version or None)
        call.version = model.version
        return model

    # -- inference -----------------------------------------------------------------------------------------
    @_rpc("ModelInfer")
    async def ModelInfer(self, request: Any, context: Any, call: _Call) -> Any:
        """Run the model (that version of it, when given) on typed or raw tensors; outputs come back raw."""
        return await self.infer(request, call)

    async def infer(self, request: Any, call: _Call) -> Any:
        """One inference request through the V2 data plane and the engine (shared by the unary and stream RPCs)."""
        ctx = self.ctx
        model = self._resolve(request.model_name, request.model_version, call)
        timer = RequestTimer()
        # Counted in (no await since the lookup): an unload waits for this request before it frees the sessions.
        model.entry.in_flight += 1
        try:
            started = time.perf_counter_ns()

            def prepare() -> dataplane.InferPlan:
                return dataplane.plan_inference(model, parse_infer_request(request), ctx.limits)

            raw_bytes = sum(len(raw) for raw in request.raw_input_contents)
            on_loop = (
                raw_bytes < PARSE_ON_LOOP_BINARY_BYTES
                if raw_bytes
                else request.ByteSize() < PARSE_ON_LOOP_JSON_BYTES  # typed contents: a Python object per value
            )
            plan = prepare() if on_loop else await ctx.offload.run(prepare)
            timer.rows, timer.compute_input = plan.rows, time.perf_counter_ns() - started
            started = time.perf_counter_ns()
            results = await ctx.engine.run(model.graph, plan.feeds, ENDPOINT)
            timer.compute_infer = time.perf_counter_ns() - started
            started = time.perf_counter_ns()
            outputs = [OutputTensor(o.name, results[o.name], True) for o in plan.outputs]
            response = encode_infer_response(model.name, model.version, request.id or None, outputs)
            timer.compute_output = time.perf_counter_ns() - started
        except BaseException:
            ctx.v2_statistics.record(model.name, model.version, timer, ok=False)
            raise
        finally:
            model.entry.in_flight -= 1
        ctx.v2_statistics.record(model.name, model.version, timer, ok=True)
        return response

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Many inference requests on one stream: up to `STREAM_WINDOW` run at once, the answers go out in request
        order, each with its request's id; a failed request is answered with its `error_message` (the stream goes
        on). Cancelling the stream cancels the requests it still runs."""
        route = f"/{SERVICE}/ModelStreamInfer"
        # The stream itself is not counted as a request: each request on it is (in `_stream_one`).
        stream_call = self.begin(route, context)
        await context.send_initial_metadata(((REQUEST_ID_KEY, stream_call.request_id),))
        window: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(maxsize=STREAM_WINDOW)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            async for request in request_iterator:
                call = _Call(route, stream_call.request_id)
                await window.put(loop.create_task(self._stream_one(request, call)))
            await window.put(None)

        reader = loop.create_task(read())
        getter: asyncio.Task[asyncio.Task[Any] | None] | None = None
        try:
            while True:
                if reader.done():
                    reader.result()  # the client's side of the stream failed: raise it
                    task = await window.get()
                else:  # wait for the next request, or for the reader to end (or fail)
                    getter = loop.create_task(window.get())
                    done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()  # pending on an empty queue: it took nothing
                        continue
                    task = getter.result()
                if task is None:
                    break
                yield await task
        finally:
            if getter is not None:
                getter.cancel()
            reader.cancel()
            while not window.empty():
                pending = window.get_nowait()
                if pending is not None:
                    pending.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _stream_one(self, request: Any, call: _Call) -> Any:
        # Counted in here, not when read: a task cancelled before it starts never runs its body, so it must not
        # have been counted.
        self.ctx.metrics.in_flight.inc()
        try:
            response = await self.infer(request, call)
        except ServiceError as error:
            self.record(call, error.status, error.type)
            return pb.ModelStreamInferResponse(
                error_message=error.message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                ),
            )
        except asyncio.CancelledError:
            self.record(call, CLIENT_CLOSED_REQUEST, "client_disconnected")
            raise
        except Exception:
            log.exception("unhandled error", extra={"request_id": call.request_id, "rpc": call.route})
            self.record(call, 500, "internal_error")
            return pb.ModelStreamInferResponse(
                error_message=f"internal error; quote request id {call.request_id} when reporting it",
                infer_response=pb.ModelInferResponse(id=request.id),
            )
        self.record(call, 200)
        return pb.ModelStreamInferResponse(infer_response=response)

    # -- model repository (app/core/control.py, as POST /v2/repository/...) --------------------------------
    @_rpc("RepositoryIndex")
    async def RepositoryIndex(self, request: Any, context: Any, call: _Call) -> Any:
        """Every version of every model in the models directory or loaded, with its state and reason."""
        entries = await self.ctx.control.index(ready_only=request.ready)
        response = pb.RepositoryIndexResponse()
        for entry in entries:
            response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        return response

    @_rpc("RepositoryModelLoad")
    async def RepositoryModelLoad(self, request: Any, context: Any, call: _Call) -> Any:
        """Load, or reload, the model as its folder says (refused unless `AE_MODEL_CONTROL` allows it)."""
        refused = [key for key in request.parameters if key in REFUSED_LOAD_PARAMETERS or key.startswith("file:")]
        if refused:
            raise BadRequest(
                f"load parameters {refused} are not supported: publish the version as a folder of the models "
                "directory (card.json and its ONNX files)",
                {"parameters": refused},
            )
        outcome = await self.ctx.control.load_model(request.model_name)
        call.model = outcome.name
        return pb.RepositoryModelLoadResponse()

    @_rpc("RepositoryModelUnload")
    async def RepositoryModelUnload(self, request: Any, context: Any, call: _Call) -> Any:
        """Unload every version of the model (those in flight finish first)."""
        outcome = await self.ctx.control.unload_model(request.model_name)
        call.model = outcome.name
        return pb.RepositoryModelUnloadResponse()

    # -- extensions not offered ----------------------------------------------------------------------------
    async def _not_offered(self, request: Any, context: Any) -> Any:
        """The shared-memory, trace and log-settings extensions: UNIMPLEMENTED, saying so."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "not offered by this server: the system/CUDA shared-memory, trace and log-settings extensions "
            "(ServerMetadata lists the extensions offered)",
        )

    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _not_offered
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _not_offered
    TraceSetting = LogSettings = _not_offered
