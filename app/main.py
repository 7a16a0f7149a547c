"""The app factory. Nothing is loaded at import: models load in the lifespan of the app `create_app` returns."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.middleware import Middleware

from app import __version__
from app.api.context import AppContext
from app.api.docs import install_docs
from app.api.endpoints import Endpoint, add_routes
from app.api.errors import install_error_handlers
from app.api.v1 import bench, control, health, inference, models
from app.api.v1.demo import install_demo
from app.api.v2 import router as v2_router_module
from app.api.v2.repository import router as v2_repository_router
from app.api.v2.router import router as v2_router
from app.api.v2.statistics import InferenceStatistics
from app.asgi.admission import Admission, AdmissionMiddleware
from app.asgi.disconnect import DisconnectMiddleware
from app.asgi.hotpath import HotPathMiddleware, HotRoute, hot_routes
from app.asgi.methods import MethodsMiddleware
from app.asgi.request_context import RequestContextMiddleware
from app.asgi.security import security_middleware
from app.core.budget import MemoryBudget
from app.core.control import ModelControl
from app.core.engine import InferenceEngine
from app.core.registry import ModelRegistry
from app.core.service import InferenceService
from app.runtime.lifecycle import Lifecycle
from app.runtime.logs import configure_logging
from app.runtime.memory import TUNABLES_ENV, MallocTrimmer
from app.runtime.metrics import Metrics
from app.runtime.offload import Offload
from app.server.protocol import HEAD_LIMITS_STATE, HeadLimits, close_idle_connections
from app.settings import Settings, get_settings

log = logging.getLogger("app")

TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
"""FastAPI's native OpenTelemetry, switched off (setting `opentelemetry`)."""

DESCRIPTION = """
Autoencoders exported to ONNX, served with ONNX Runtime.

* **Models**: `GET /v1/models` lists every model with its tasks, tensor specs, status and providers.
* **Tasks**: `POST /v1/models/{name}/{encode|decode|reconstruct|score|denoise|predict}`, and the same on each
  task's default model at `POST /v1/{task}`.
* **Inputs**: JSON `{"inputs": [...]}` (a batch), `application/x-npy` (float32), and for image models
  `multipart/form-data` uploads or a raw `image/*` body (PNG, JPEG, BMP, GIF, WebP; converted to grayscale
  with BT.601 luma, alpha over black, EXIF orientation applied). Pixels are in [0, 1].
* **Outputs** by `Accept`: JSON, `application/x-npy`, `application/x-npz`, `image/png` (one image).
* **Errors**: always `{"error": {"type", "message", "details"}}` with status 400/404/406/413/415/422/500/503
  (on `/v2`: the protocol's `{"error": "<message>"}`).
* **Open Inference Protocol** (KServe V2 / Triton HTTP) under `/v2`: every graph is a model `<model>.<role>`
  (`dense.encoder`, `dense.decoder`, `dense.full`; `dense` = its full graph); JSON or binary tensors
  (`Inference-Header-Content-Length`), so tritonclient, the KServe SDK and perf tools work unmodified.
* **Model control** (`AE_MODEL_CONTROL=explicit|poll`): Triton's and MLServer's repository extension
  (`POST /v2/repository/index`, `/v2/repository/models/{name}/load|unload`) and
  `POST /v1/models/{name}/versions/{v}/load|unload|promote`, with the API key when one is set.
* **Operations**: `/healthz`, `/readyz`, `/metrics`; every response carries `X-Request-ID`.
"""


@dataclass(frozen=True)
class _Parts:
    """What the middleware needs when the app is built, before the lifespan runs."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    admission: Admission
    request_memory: MemoryBudget
    image_memory: MemoryBudget
    inference_memory: MemoryBudget

    @classmethod
    def build(cls, settings: Settings) -> _Parts:
        def budget(name: str, limit: int) -> MemoryBudget:
            return MemoryBudget(name, limit, settings.memory_wait_seconds, settings.retry_after_seconds)

        return cls(
            settings=settings,
            metrics=Metrics(),
            lifecycle=Lifecycle(
                settings.drain_seconds, settings.graceful_timeout_seconds, on_drain=[close_idle_connections]
            ),
            admission=Admission(
                settings.max_in_flight_requests,
                settings.max_body_reads,
                settings.max_body_reads_per_client,
                settings.retry_after_seconds,
            ),
            request_memory=budget("request memory", settings.request_memory_budget_bytes),
            image_memory=budget("image memory", settings.image_memory_budget_bytes),
            inference_memory=budget("inference memory", settings.inference_memory_budget_bytes),
        )


def middleware_stack(parts: _Parts, hot_routes: list[HotRoute]) -> list[Middleware]:
    """The ASGI middleware, outermost first: the one place their order is decided."""
    settings = parts.settings
    return [
        # request id, the access log line, metrics, the shutdown cut-off, JSON 500s
        Middleware(
            RequestContextMiddleware,
            metrics=parts.metrics,
            lifecycle=parts.lifecycle,
            retry_after_seconds=settings.retry_after_seconds,
        ),
        *security_middleware(settings),  # CORS, then the API key, when configured
        # body limits, body reads (in all, per client, paced), the in-flight cap, the request memory budget
        Middleware(
            AdmissionMiddleware, settings=settings, admission=parts.admission, request_memory=parts.request_memory
        ),
        Middleware(DisconnectMiddleware),  # a client gone during inference stops its request
        Middleware(HotPathMiddleware, routes=hot_routes),  # the hot endpoints without FastAPI's machinery
        Middleware(MethodsMiddleware),  # HEAD wherever GET, OPTIONS with Allow, WebSocket refused in JSON
    ]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; the models load when the app starts (its lifespan), not here."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    parts = _Parts.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = InferenceEngine(parts.metrics, settings, parts.inference_memory)
        registry = ModelRegistry(settings, engine, parts.metrics)
        offload = Offload.from_settings(settings)
        trimmer = MallocTrimmer(settings.malloc_trim_seconds, offload, parts.metrics)
        context = AppContext(
            settings=settings,
            metrics=parts.metrics,
            lifecycle=parts.lifecycle,
            request_memory=parts.request_memory,
            image_memory=parts.image_memory,
            inference_memory=parts.inference_memory,
            engine=engine,
            registry=registry,
            service=InferenceService(engine, settings, offload),
            offload=offload,
            trimmer=trimmer,
            v2_statistics=InferenceStatistics(),
            limits=engine.limits,
            # load / unload / promote at run time, and the repository poll (AE_MODEL_CONTROL)
            control=ModelControl(settings, registry, engine, trimmer.trim_now if trimmer.enabled else None),
        )
        app.state.context = context
        await anyio.to_thread.run_sync(registry.load_all)
        if settings.gc_freeze:
            # Everything alive now (modules, FastAPI's and pydantic's schemas, the sessions' metadata) lives as
            # long as the process: moved out of the collector's sight, a full collection no longer walks it.
            # Measured at 1-row encode under load: p99 50 -> 14 ms, +10 % requests/s.
            gc.collect()
            gc.freeze()
        # gRPC (AE_GRPC_PORT, app/server/grpc_server.py): the same context and engine, in this event loop.
        grpc_server = None
        if settings.grpc_port:
            # Imported only when gRPC serves: its protobuf descriptors (Triton's `inference.*`) go into the
            # process-wide pool, where a second definition of the same names (KServe's SDK) would be refused.
            from app.server.grpc_server import start_grpc_server

            grpc_server = await start_grpc_server(settings, context)
        if grpc_server is not None:
            parts.lifecycle.add_drain_callback(grpc_server.on_drain)  # health NOT_SERVING once the drain starts
        parts.lifecycle.install()  # SIGTERM: drain, close idle connections, cut off at the deadline
        context.trimmer.start()  # freed memory back to the OS every AE_MALLOC_TRIM_SECONDS (app/runtime/memory.py)
        context.control.start()  # AE_MODEL_CONTROL=poll: watch the models directory
        readiness = registry.readiness()
        log.info(
            "service started",
            extra={
                "models_dir": str(settings.models_dir),
                "ready": readiness.ready,
                "models": {r.name: {str(v): e.status.value for v, e in r.versions.items()} for r in registry.models()},
                "not_ready": readiness.not_ready,
                "grpc_port": grpc_server.port if grpc_server is not None else None,
                "glibc_tunables": os.environ.get(TUNABLES_ENV),  # AE_MALLOC_TUNABLES, as the process started
            },
        )
        try:
            # Lifespan state: uvicorn hands it to every connection's protocol (app/server/protocol.py reads the
            # head limits here).
            yield {HEAD_LIMITS_STATE: HeadLimits.from_settings(settings)}
        finally:
            if grpc_server is not None:  # stop accepting; RPCs in flight get the rest of the grace period
                await grpc_server.stop(parts.lifecycle.remaining_grace())
            parts.lifecycle.uninstall()
            await context.control.stop()
            await context.trimmer.stop()
            if settings.gc_freeze:
                gc.unfreeze()  # what this app leaves behind may be collected again (tests run many apps)
            await engine.aclose()
            registry.close()
            parts.metrics.close()
            log.info("service stopped")

    endpoints = endpoint_table(settings)
    app = FastAPI(
        title="Autoencoder inference service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        telemetry=None if settings.opentelemetry else TELEMETRY_OFF,
        middleware=middleware_stack(parts, hot_routes(endpoints)),
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(v2_router)
    app.include_router(control.router)
    app.include_router(v2_repository_router)
    add_routes(app, endpoints)
    if settings.docs:
        install_docs(app)
    if settings.demo:
        install_demo(app)
    return app


def endpoint_table(settings: Settings) -> list[Endpoint]:
    """Every operation served through the endpoint table (app/api/endpoints.py): the inference routes of both
    protocols, and the benchmark's ceilings when they are on."""
    return [*v2_router_module.ENDPOINTS, *inference.ENDPOINTS, *(bench.ENDPOINTS if settings.bench_endpoints else [])]
