"""Liveness, readiness and metrics."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import LifecycleDep, MetricsDep, RegistryDep
from app.api.formats import to_json
from app.api.schemas import ErrorInfo, Liveness, ModelHealth, Readiness
from app.api.v1.models import version_states
from app.runtime.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness, summary="Liveness")
async def get_liveness() -> Liveness:
    """The process is up and answering (says nothing about the models)."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "a required model does not serve (see `not_ready`)"}},
)
async def get_readiness(registry: RegistryDep, lifecycle: LifecycleDep) -> Response:
    """200 when every required model serves a version (by default every card found; never with no model),
    else 503; per model its status (its default version's) and each version's state.
    503 too while the process drains before shutting down (requests are still served then)."""
    state = registry.readiness()
    if lifecycle.draining:
        state = replace(state, ready=False, not_ready={**state.not_ready, "*": "shutting down (draining)"})
    models = {}
    for record in registry.models():
        entry = record.representative
        models[record.name] = ModelHealth(
            status=entry.status.value,
            reason=entry.reason,
            providers=list(entry.providers.used) if entry.providers else [],
            fallback=entry.providers.fallback if entry.providers else False,
            default_version=None if record.default is None else str(record.default),
            versions={state.version: state for state in version_states(record)},
        )
    body = Readiness(ready=state.ready, required=state.required, not_ready=state.not_ready, models=models)
    if not state.ready:
        names = ", ".join(f"{k}: {v}" for k, v in state.not_ready.items())
        body.error = ErrorInfo(type="not_ready", message=f"not ready: {names}", details={"not_ready": state.not_ready})
    return Response(to_json(body.model_dump()), status_code=200 if state.ready else 503, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "text exposition"}},
)
async def get_metrics(metrics: MetricsDep) -> Response:
    """Requests, errors and latency per route and model; batch sizes and ONNX time per model and endpoint."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
