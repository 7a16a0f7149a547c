"""Model control on `/v1`: load, unload and promote one version of a model at run time (`AE_MODEL_CONTROL`
`explicit` or `poll`; 403 with `none`, 409 with several workers). The work is `app.core.control`'s."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.api.deps import ControlDep
from app.api.schemas import ErrorResponse, ModelControlResponse
from app.api.v1.models import version_states
from app.core.control import Outcome

router = APIRouter(prefix="/v1/models", tags=["model control"])

ModelName = Annotated[str, Path(description="model name (its folder in the models directory)", examples=["dense"])]
ModelVersion = Annotated[str, Path(description="a version of the model (its folder number)", examples=["2"])]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "the API key is set and the request does not carry it",
        403: "model control is off (AE_MODEL_CONTROL=none)",
        404: "no such model or version (in the repository or loaded); a version that is not a positive integer",
        409: "several worker processes (AE_WORKERS > 1); or, to promote, a version that is not loaded",
        422: "load: the version was refused (the reason; what served before still serves); any: invalid request",
    }
    return {status: {"model": ErrorResponse, "description": described[status]} for status in statuses}


def _answer(request: Request, outcome: Outcome) -> ModelControlResponse:
    record = outcome.record
    request.state.model = outcome.name
    if outcome.version is not None:
        request.state.model_version = str(outcome.version)
    return ModelControlResponse(
        name=outcome.name,
        action=outcome.action,  # type: ignore[arg-type]
        version=None if outcome.version is None else str(outcome.version),
        loaded=record is not None,
        default_version=None if record is None or record.default is None else str(record.default),
        versions=version_states(record) if record is not None else [],
    )


@router.post(
    "/{name}/versions/{version}/load",
    response_model=ModelControlResponse,
    summary="Load a model version",
    responses=_errors(401, 403, 404, 409, 422),
)
async def load_model_version(
    name: ModelName, version: ModelVersion, control: ControlDep, request: Request
) -> ModelControlResponse:
    """Load (or reload) that version from the models directory, whatever `versions.json` selects: verified (size,
    sha256, card against graph, version against folder), opened and warmed up off the event loop while the model
    keeps serving, then swapped in. A refused version leaves what served untouched (422 with the reason)."""
    return _answer(request, await control.load_version(name, version))


@router.post(
    "/{name}/versions/{version}/unload",
    response_model=ModelControlResponse,
    summary="Unload a model version",
    responses=_errors(401, 403, 404, 409, 422),
)
async def unload_model_version(
    name: ModelName, version: ModelVersion, control: ControlDep, request: Request
) -> ModelControlResponse:
    """New requests no longer reach that version; those in flight finish, then its sessions are freed. The
    default falls back to the highest version that serves; unloading the last one removes the model (no longer
    required for readiness). A version on disk but not loaded: nothing to do."""
    return _answer(request, await control.unload_version(name, version))


@router.post(
    "/{name}/versions/{version}/promote",
    response_model=ModelControlResponse,
    summary="Make a version the default",
    responses=_errors(401, 403, 404, 409, 422),
)
async def promote_model_version(
    name: ModelName, version: ModelVersion, control: ControlDep, request: Request
) -> ModelControlResponse:
    """Requests that name no version get this one from now on (it must be loaded). In memory only: the models
    volume is read-only, and a restart reads `versions.json` again."""
    return _answer(request, control.promote(name, version))
