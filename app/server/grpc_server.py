"""The gRPC server: `grpc.aio` in the same process and event loop as the HTTP app, started and stopped by the
app's lifespan (so `python -m app` and `uvicorn app.main:create_app --factory` both serve it), on
`AE_GRPC_HOST:AE_GRPC_PORT` (`AE_GRPC_PORT=0`: off).

It serves Triton's `inference.GRPCInferenceService` (`app/api/grpc/servicer.py`, over the same context, registry,
engine and batcher as HTTP), the standard `grpc.health.v1.Health` service and server reflection. With several
worker processes each binds the port with SO_REUSEPORT and the kernel spreads connections over them; with one,
SO_REUSEPORT is off, so a port already in use fails the start-up instead of being shared silently.

- Messages above `AE_GRPC_MAX_MESSAGE_BYTES` are refused by gRPC itself before they are read (RESOURCE_EXHAUSTED).
- `AE_API_KEY` set: every RPC needs the metadata `authorization: Bearer <key>` (UNAUTHENTICATED otherwise), except
  the health service and `ServerLive` / `ServerReady` when their HTTP paths (`/v2/health/live`, `/v2/health/ready`)
  are in `AE_API_KEY_EXEMPT_PATHS`. Loading and unloading models always need it.
- Health: `""` is SERVING while the process serves and is not draining; `inference.GRPCInferenceService` is
  SERVING when every required model serves too (as `/v2/health/ready`). Both turn NOT_SERVING when the drain
  starts (SIGTERM); at shutdown the server stops accepting RPCs and gives those in flight the rest of the grace
  period.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # type: ignore[import-untyped]

from app.api.context import AppContext
from app.api.grpc.servicer import SERVICE, InferenceServicer
from app.asgi.security import path_matches
from app.runtime.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("app.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HTTP_PATH_OF_RPC = {f"/{SERVICE}/ServerLive": "/v2/health/live", f"/{SERVICE}/ServerReady": "/v2/health/ready"}
"""RPCs exempt from the API key exactly when their HTTP counterpart is (`AE_API_KEY_EXEMPT_PATHS`)."""
HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"


class ReadinessHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """`grpc.health.v1.Health` whose `Check` answers from the app's state at that moment (not from a status set
    once): the overall service `""` while not draining, the inference service when the models are ready too."""

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx

    def status_of(self, service: str) -> Any:
        if self.ctx.lifecycle.draining:
            return NOT_SERVING
        if service == SERVICE:
            return SERVING if self.ctx.registry.readiness().ready else NOT_SERVING
        return SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        return health_pb2.HealthCheckResponse(status=self.status_of(request.service))

    async def publish(self) -> None:
        """Push the current statuses to `Watch` callers."""
        for service in ("", SERVICE):
            await self.set(service, self.status_of(service))


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED unless the call carries `authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, api_key: str, exempt_paths: list[str], metrics: Metrics) -> None:
        self.key = api_key.encode()
        self.exempt = {rpc for rpc, path in HTTP_PATH_OF_RPC.items() if path_matches(path, exempt_paths)}
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        method = details.method
        if method in self.exempt or method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        token = None
        for item in details.invocation_metadata or ():
            if item.key == "authorization":
                scheme, _, value = str(item.value).strip().partition(" ")
                token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
                break
        if token is not None and hmac.compare_digest(token.encode(), self.key):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED (and the name is not a label value)
            return None
        metrics = self.metrics  # counted as the HTTP side counts its 401s
        metrics.child(metrics.requests, "GRPC", method, "", "", "401").inc()
        metrics.child(metrics.errors, method, "", "", "unauthorized").inc()
        problem = "missing API key" if token is None else "invalid API key"
        return _refusal(handler, f"{problem}: send the metadata 'authorization: Bearer <key>'")


def _refusal(handler: Any, message: str) -> Any:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC channel arguments: message size limits, SO_REUSEPORT with several workers."""
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", -1),  # answers are bounded by the request limits
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


class GrpcServer:
    """The gRPC listener of one worker process, over that process's app context."""

    def __init__(self, settings: Settings, ctx: AppContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.health = ReadinessHealth(ctx)
        self.port = 0
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and serve; RuntimeError naming the address when it cannot be bound."""
        settings = self.settings
        interceptors = []
        if settings.api_key is not None:
            interceptors.append(
                ApiKeyInterceptor(
                    settings.api_key.get_secret_value(), list(settings.api_key_exempt_paths), self.ctx.metrics
                )
            )
        server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.ctx), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC: cannot bind {address} (in use? AE_GRPC_PORT=0 turns gRPC off): {exc}") from None
        if not port:
            raise RuntimeError(f"gRPC: cannot bind {address} (in use? AE_GRPC_PORT=0 turns gRPC off)")
        await server.start()
        self._server, self.port = server, port
        await self.health.publish()
        log.info("grpc server started", extra={"address": address, "port": port})

    def on_drain(self) -> None:
        """The drain started (SIGTERM): health answers NOT_SERVING (RPCs are still served)."""
        task = asyncio.get_running_loop().create_task(self.health.publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting RPCs, let those in flight finish for up to `grace_seconds`, then cancel the rest."""
        if self._server is None:
            return
        self.on_drain()
        await self._server.stop(grace_seconds)
        self._server = None
        log.info("grpc server stopped", extra={"grace_seconds": round(grace_seconds, 3)})


async def start_grpc_server(settings: Settings, ctx: AppContext) -> GrpcServer | None:
    """The started gRPC server, or None when `AE_GRPC_PORT` is 0."""
    if settings.grpc_port == 0:
        return None
    server = GrpcServer(settings, ctx)
    await server.start()
    return server
