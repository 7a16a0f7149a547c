"""Model metadata: what is served, how to call it, how good it is, and what it runs on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.api.deps import RegistryDep
from app.api.schemas import ErrorResponse, GraphInfo, ModelDetail, ModelList, ModelSummary, ProvidersInfo
from app.core.registry import ModelEntry
from app.core.tasks import TASKS

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(description="model name, as listed by `GET /v1/models`", examples=["dense"])]


def summarize(entry: ModelEntry) -> dict[str, Any]:
    card = entry.card
    tasks = [t for t in card.tasks if t in TASKS] if card else []
    return {
        "name": entry.name,
        "version": card.version if card else None,
        "kind": card.kind if card else None,
        "description": card.description if card else None,
        "status": entry.status.value,
        "reason": entry.reason,
        "tasks": tasks,
        "input_layout": card.input.layout if card else None,
        "endpoints": {task: f"/v1/models/{entry.name}/{task}" for task in tasks},
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
    return ModelList(models=[ModelSummary(**summarize(e)) for e in registry.entries()])


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="Describe a model",
    responses={
        404: {"model": ErrorResponse, "description": "no such model"},
        422: {"model": ErrorResponse, "description": "invalid request"},
    },
)
async def get_model(name: ModelName, registry: RegistryDep, request: Request) -> ModelDetail:
    """The model card as a client needs it: tasks, tensor specs and ranges, metrics, providers, status."""
    entry = registry.get(name)
    request.state.model = entry.name
    card = entry.card
    graphs: dict[str, GraphInfo] = {}
    if card is not None:
        graphs = {
            role: GraphInfo(**g.model_dump(include=set(GraphInfo.model_fields))) for role, g in card.graphs.items()
        }
    return ModelDetail(
        **summarize(entry),
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
