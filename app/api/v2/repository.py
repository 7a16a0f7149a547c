"""The model repository extension of Triton and MLServer: `POST /v2/repository/index`, `POST
/v2/repository/models/{name}/load`, `POST /v2/repository/models/{name}/unload` (tritonclient's
`get_model_repository_index`, `load_model`, `unload_model`). Names are model names (`dense`; a graph's V2 name
such as `dense.encoder` stands for its model): a call acts on every graph and every version of the model. The
work is `app.core.control`'s; errors have the protocol's `{"error": "<message>"}` shape."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from app.api.deps import ControlDep
from app.api.v2.protocol import JSON_CONTENT_TYPE
from app.api.v2.router import TAG, _inline_refs
from app.api.v2.schemas import (
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryModelRequest,
    V2ErrorResponse,
)
from app.core.errors import BadRequest, InvalidJSON

router = APIRouter(prefix="/v2/repository", tags=[TAG])

Body = TypeVar("Body", bound=BaseModel)
ModelName = Annotated[
    str, Path(description="a model name (`GET /v1/models` lists them), as in the repository", examples=["dense"])
]
REFUSED_PARAMETERS = ("config",)
"""Triton's load overrides (a model configuration, and `file:<path>` contents) that this service refuses: a
version is published as a folder in the repository, checked against its card."""


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the body is not JSON, or not the extension's shape; Triton's config and file overrides",
        401: "the API key is set and the request does not carry it",
        403: "model control is off (AE_MODEL_CONTROL=none)",
        404: "no such model in the repository (or loaded)",
        409: "several worker processes (AE_WORKERS > 1)",
        422: "load: a version was refused (the reason; what served before still serves); any: invalid request",
    }
    return {status: {"model": V2ErrorResponse, "description": described[status]} for status in statuses}


def _body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "description": "optional JSON (any or no Content-Type)",
            "content": {JSON_CONTENT_TYPE: {"schema": _inline_refs(model.model_json_schema())}},
        }
    }


async def _read(request: Request, model: type[Body]) -> Body:
    """The optional JSON body as `model`; 400 naming the problem when it is not JSON or not that shape."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}; send a JSON object (or no body)") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise BadRequest(f"the body is not a {model.__name__}: {where}: {first.get('msg', 'invalid')}") from None


def _check_load_parameters(body: RepositoryModelRequest) -> None:
    refused = [key for key in body.parameters or {} if key in REFUSED_PARAMETERS or key.startswith("file:")]
    if refused:
        raise BadRequest(
            f"load parameters {refused} are not supported: publish the version as a folder of the models directory "
            "(card.json and its ONNX files, written as a hidden folder and then renamed to its number)",
            {"parameters": refused},
        )


@router.post(
    "/index",
    response_model=RepositoryIndexResponse,
    summary="Repository index",
    responses=_errors(400, 401),
    openapi_extra=_body_openapi(RepositoryIndexRequest),
)
async def get_repository_index(request: Request, control: ControlDep) -> Response:
    """Every version of every model found in the models directory or loaded: `name`, `version`, `state` (READY,
    UNAVAILABLE, LOADING) and `reason` (why it does not serve: failed checks with their cause, `unloaded`, outside
    the version policy, an incomplete folder). `{"ready": true}`: only what serves. Answers in every mode."""
    body = await _read(request, RepositoryIndexRequest)
    entries = await control.index(ready_only=body.ready)
    payload = [RepositoryIndexEntry(**vars(entry)).model_dump() for entry in entries]
    return Response(orjson.dumps(payload), media_type=JSON_CONTENT_TYPE)


@router.post(
    "/models/{name}/load",
    summary="Load a model",
    response_class=Response,
    responses={200: {"description": "loaded (no body)"}, **_errors(400, 401, 403, 404, 409, 422)},
    openapi_extra=_body_openapi(RepositoryModelRequest),
)
async def load_repository_model(name: ModelName, request: Request, control: ControlDep) -> Response:
    """Load, or reload, the model as its folder says (every version `versions.json` selects): verified, opened
    and warmed up off the event loop while the old versions serve, then swapped in; versions no longer selected
    are unloaded once a new one serves. A refused version leaves what served untouched (422 with the reason)."""
    body = await _read(request, RepositoryModelRequest)
    _check_load_parameters(body)
    outcome = await control.load_model(name)
    request.state.model = outcome.name
    return Response(status_code=200)


@router.post(
    "/models/{name}/unload",
    summary="Unload a model",
    response_class=Response,
    responses={200: {"description": "unloaded (no body)"}, **_errors(400, 401, 403, 404, 409, 422)},
    openapi_extra=_body_openapi(RepositoryModelRequest),
)
async def unload_repository_model(name: ModelName, request: Request, control: ControlDep) -> Response:
    """Unload every version of the model: new requests get 404, those in flight finish, then the sessions are
    freed; the model is no longer required for readiness. A model on disk that is not loaded: nothing to do."""
    await _read(request, RepositoryModelRequest)
    outcome = await control.unload_model(name)
    request.state.model = outcome.name
    return Response(status_code=200)
