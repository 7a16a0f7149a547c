"""Model metadata: what is served, how to call it, how good it is, and what it runs on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.api.deps import RegistryDep
from app.api.schemas import (
    ErrorResponse,
    GraphInfo,
    ModelDetail,
    ModelList,
    ModelSummary,
    ModelVersions,
    ProvidersInfo,
    VersionState,
)
from app.core.registry import ModelEntry, ModelRecord, ModelRegistry
from app.core.tasks import TASKS

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(description="model name, as listed by `GET /v1/models`", examples=["dense"])]
ModelVersion = Annotated[
    str, Path(description="model version, as listed by `GET /v1/models/{name}/versions`", examples=["1"])
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such model or version"},
    422: {"model": ErrorResponse, "description": "invalid request"},
}


def version_states(record: ModelRecord) -> list[VersionState]:
    """Each version the policy selected, ascending, with its state and whether it is the default."""
    return [
        VersionState(
            version=str(number), status=entry.status.value, reason=record.note(entry), default=number == record.default
        )
        for number, entry in record.versions.items()
    ]


def summarize(entry: ModelEntry, registry: ModelRegistry, pinned: bool = False) -> dict[str, Any]:
    """The summary of `entry` (a version of its model); `pinned`: addressed by version, so the endpoints are the
    version's own routes."""
    card = entry.card
    record = registry.record(entry.name)
    tasks = [t for t in card.tasks if t in TASKS] if card else []
    base = f"/v1/models/{entry.name}/versions/{entry.version}" if pinned else f"/v1/models/{entry.name}"
    return {
        "name": entry.name,
        "version": str(entry.version),
        "default_version": None if record.default is None else str(record.default),
        "versions": version_states(record),
        "kind": card.kind if card else None,
        "description": card.description if card else None,
        "status": entry.status.value,
        "reason": entry.reason,
        "tasks": tasks,
        "input_layout": card.input.layout if card else None,
        "endpoints": {task: f"{base}/{task}" for task in tasks},
        "providers": ProvidersInfo(**entry.providers.as_dict()) if entry.providers else None,  # type: ignore[arg-type]
    }


def _pixel_scale(entry: ModelEntry) -> str | None:
    card = entry.card
    if card is None or card.input.layout == "sequence":
        return None
    return (
        "JSON and .npy inputs are pixels in [0, 1] (0 = black background, 1 = white ink: MNIST's 0-255 divided "
        "by 255); uploaded 8-bit images are divided by 255 (16-bit by 65535) by the service"
    )


@router.get("", response_model=ModelList, summary="List models")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model found in the models directory, with its status, tasks and providers."""
    return ModelList(models=[ModelSummary(**summarize(e, registry)) for e in registry.entries()])


@router.get("/{name}", response_model=ModelDetail, summary="Describe a model", responses=_NOT_FOUND)
async def get_model(name: ModelName, registry: RegistryDep, request: Request) -> ModelDetail:
    """The model card of the default version as a client needs it: tasks, tensor specs and ranges, metrics,
    providers, status, and every version with its state."""
    entry = registry.get(name)
    request.state.model = entry.name
    request.state.model_version = str(entry.version)
    return describe(entry, registry, pinned=False)


@router.get("/{name}/versions", response_model=ModelVersions, summary="List a model's versions", responses=_NOT_FOUND)
async def list_model_versions(name: ModelName, registry: RegistryDep, request: Request) -> ModelVersions:
    """Every version the policy selected with its state (ready, loading, failed with the reason), the default
    version, the policy, and the versions found on disk."""
    record = registry.record(name)
    request.state.model = record.name
    return ModelVersions(
        name=record.name,
        default_version=None if record.default is None else str(record.default),
        policy=record.policy.as_dict(),
        requested_default=None if record.policy.default is None else str(record.policy.default),
        on_disk=[str(number) for number in record.on_disk],
        versions=version_states(record),
        problem=record.problem,
    )


@router.get(
    "/{name}/versions/{version}", response_model=ModelDetail, summary="Describe a model version", responses=_NOT_FOUND
)
async def get_model_version(
    name: ModelName, version: ModelVersion, registry: RegistryDep, request: Request
) -> ModelDetail:
    """The model card of that version (404 when the model has no such version)."""
    request.state.model = registry.record(name).name
    entry = registry.get(name, version)
    request.state.model_version = str(entry.version)
    return describe(entry, registry, pinned=True)


def _runtime(entry: ModelEntry, role: str) -> dict[str, int | None]:
    """The intra-op threads the graph's sessions were opened with (as ONNX Runtime reports them), and the radii
    measured at load."""
    graph = entry.graphs.get(role)
    if graph is None:
        return {}
    lone = graph.lone_session
    return {
        "intra_op_threads": graph.session.get_session_options().intra_op_num_threads,
        "lone_intra_op_threads": lone.get_session_options().intra_op_num_threads if lone is not None else None,
        "receptive_radius": graph.receptive_radius,
        "tile_radius": graph.tile_radius,
    }


def describe(entry: ModelEntry, registry: ModelRegistry, pinned: bool) -> ModelDetail:
    """The detail of one version of a model."""
    card = entry.card
    graphs: dict[str, GraphInfo] = {}
    if card is not None:
        graphs = {
            role: GraphInfo(**g.model_dump(include=set(GraphInfo.model_fields)), **_runtime(entry, role))
            for role, g in card.graphs.items()
        }
    return ModelDetail(
        **summarize(entry, registry, pinned),
        input=card.input.model_dump() if card else None,
        pixel_scale=_pixel_scale(entry),
        graphs=graphs,
        latent=card.latent if card else None,
        anomaly=card.anomaly.model_dump() if card and card.anomaly else None,
        forecast=card.forecast.model_dump() if card and card.forecast else None,
        preprocessing=card.preprocessing if card else None,
        metrics=card.metrics if card else {},
        data=card.data if card else {},
        training=card.training if card else {},
        provenance=card.provenance if card else {},
        load_seconds=entry.load_seconds,
    )
