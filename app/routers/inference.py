"""Inference routes: `POST /v1/models/{name}/{task}` for every task, and `POST /v1/{task}` on the task's
default model. Each handler is parse -> run -> render; the work lives in `app.inputs`, `app.service` and
`app.outputs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from app.codecs import JSON, NPY, NPZ, PNG
from app.deps import RegistryDep, ServiceDep, SettingsDep
from app.hotpath import HotRoute
from app.inputs import InputOptions, read_inputs
from app.outputs import choose_format, render
from app.preprocess import Preprocess
from app.registry import ModelRegistry
from app.schemas import ErrorResponse, TensorRequest
from app.service import InferenceService
from app.settings import Settings
from app.tasks import TASKS, run_task

router = APIRouter()

ModelName = Annotated[str, Path(description="model name, as listed by `GET /v1/models`", examples=["dense"])]
PreprocessQuery = Annotated[
    Preprocess,
    Query(
        description="image uploads only. `auto`: `resize` for fixed-size models, `none` for fully convolutional "
        "ones; `none`: as decoded; `resize`: bilinear to the model's size; `mnist`: invert if dark on light, crop "
        "to the digit, fit in 20x20, centre by mass in 28x28"
    ),
]
InvertQuery = Annotated[
    bool | None,
    Query(
        description="image uploads only: invert pixels (1 - x) first. Default: no, except that `mnist` "
        "decides from the border"
    ),
]

FORMATS_NOTE = (
    '\n\n**Request bodies**: `application/json` (`{{"inputs": [...]}}`), `application/x-npy` (float32, C order, '
    "batch first, never unpickled){images}.\n\n**Responses** by `Accept`: `application/json` (default), "
    "`application/x-npy` (the main output), `application/x-npz` (every output){png}.\n\nPixels are in [0, 1]; values "
    "outside the card's range or non-finite are refused with a 422 naming the field and index."
)
BINARY = {"schema": {"type": "string", "format": "binary"}}


def _request_examples(task: str) -> dict[str, Any]:
    return {name: {"summary": name, "value": {"inputs": value}} for name, value in TASKS[task].examples.items()}


def openapi_for(task: str) -> dict[str, Any]:
    """The request body and responses of a task route, documented for every accepted format."""
    definition = TASKS[task]
    content: dict[str, Any] = {
        JSON: {"schema": TensorRequest.model_json_schema(), "examples": _request_examples(task)},
        NPY: BINARY,
    }
    if definition.takes_images:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "one or more images (PNG, JPEG, BMP, GIF, WebP); each is one sample",
                    }
                },
            }
        }
        for image_type in ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp"):
            content[image_type] = BINARY
        if definition.returns_uploads:  # an upload is the natural way in: list it first (Swagger UI's default)
            content = {"multipart/form-data": content.pop("multipart/form-data"), **content}
    return {
        "requestBody": {
            "required": True,
            "description": "a batch of samples, as JSON, .npy, or (image models) image uploads",
            "content": content,
        }
    }


def responses_for(task: str) -> dict[int | str, dict[str, Any]]:
    ok_content: dict[str, Any] = {NPY: BINARY, NPZ: BINARY}
    if TASKS[task].gives_images:
        ok_content[PNG] = BINARY
    return {
        200: {"model": TASKS[task].response, "description": "the task's outputs", "content": ok_content},
        400: {"model": ErrorResponse, "description": "unreadable body (JSON, .npy, image, multipart)"},
        404: {"model": ErrorResponse, "description": "no such model, or the model does not offer this task"},
        406: {"model": ErrorResponse, "description": "the Accept header asks for a format this answer cannot take"},
        413: {"model": ErrorResponse, "description": "body, batch, series or image over the limits"},
        415: {"model": ErrorResponse, "description": "missing or unsupported Content-Type / image format"},
        422: {"model": ErrorResponse, "description": "wrong shape, non-numeric, non-finite or out-of-range values"},
        500: {"model": ErrorResponse, "description": "the model failed or produced invalid output"},
        503: {"model": ErrorResponse, "description": "the model exists but did not load"},
    }


async def serve_task(
    request: Request,
    name: str,
    task: str,
    options: InputOptions,
    registry: ModelRegistry,
    service: InferenceService,
    settings: Settings,
) -> Response:
    """Parse the request, run the task on the model, answer in the negotiated format."""
    entry = registry.get(name)
    request.state.model = entry.name
    request.state.task = task
    entry = registry.serving(name)
    entry.graph_for(task)  # 404 before the body is read when the model has no such task
    batch = await read_inputs(request, entry, task, options, settings, service)
    fmt = choose_format(entry, task, batch, request.headers.get("accept"))
    result = await run_task(service, entry, task, batch)
    return render(result, fmt)


Handler = Callable[..., Awaitable[Response]]


def _model_route(task: str) -> Handler:
    if not TASKS[task].takes_images:

        async def handler(
            name: ModelName, request: Request, registry: RegistryDep, service: ServiceDep, settings: SettingsDep
        ) -> Response:
            return await serve_task(request, name, task, InputOptions(), registry, service, settings)

    else:

        async def handler(  # type: ignore[misc]
            name: ModelName,
            request: Request,
            registry: RegistryDep,
            service: ServiceDep,
            settings: SettingsDep,
            preprocess: PreprocessQuery = "auto",
            invert: InvertQuery = None,
        ) -> Response:
            options = InputOptions(preprocess=preprocess, invert=invert)
            return await serve_task(request, name, task, options, registry, service, settings)

    handler.__name__ = f"{task}_model"
    handler.__doc__ = TASKS[task].summary
    return handler


def _alias_route(task: str) -> Handler:
    if not TASKS[task].takes_images:

        async def handler(
            request: Request, registry: RegistryDep, service: ServiceDep, settings: SettingsDep
        ) -> Response:
            name = settings.default_model(task)
            return await serve_task(request, name, task, InputOptions(), registry, service, settings)

    else:

        async def handler(  # type: ignore[misc]
            request: Request,
            registry: RegistryDep,
            service: ServiceDep,
            settings: SettingsDep,
            preprocess: PreprocessQuery = "auto",
            invert: InvertQuery = None,
        ) -> Response:
            name = settings.default_model(task)
            options = InputOptions(preprocess=preprocess, invert=invert)
            return await serve_task(request, name, task, options, registry, service, settings)

    handler.__name__ = f"{task}_default"
    handler.__doc__ = TASKS[task].summary
    return handler


def _note(task: str) -> str:
    images = (
        ", `multipart/form-data` image files (field `file`) or a raw `image/*` body" if TASKS[task].takes_images else ""
    )
    png = ", `image/png` (one image)" if TASKS[task].gives_images else ""
    return FORMATS_NOTE.format(images=images, png=png)


for _task in TASKS:
    router.add_api_route(
        f"/v1/models/{{name}}/{_task}",
        _model_route(_task),
        methods=["POST"],
        summary=TASKS[_task].summary,
        description=TASKS[_task].description + _note(_task),
        operation_id=f"{_task}_model",
        tags=["inference"],
        openapi_extra=openapi_for(_task),
        responses=responses_for(_task),
        response_model=None,
    )
for _task in TASKS:
    router.add_api_route(
        f"/v1/{_task}",
        _alias_route(_task),
        methods=["POST"],
        summary=f"{TASKS[_task].summary} (default model)",
        description=f"`POST /v1/models/{{default}}/{_task}` on the default model of the task "
        f"(setting `AE_DEFAULT_{_task.upper()}_MODEL`). " + TASKS[_task].description + _note(_task),
        operation_id=f"{_task}_default",
        openapi_extra=openapi_for(_task),
        responses=responses_for(_task),
        response_model=None,
        tags=["inference (default models)"],
    )


def _hot_model_route(task: str) -> HotRoute:
    async def handler(request: Request, name: str) -> Response:
        state = request.app.state
        return await serve_task(request, name, task, InputOptions(), state.registry, state.service, state.settings)

    return HotRoute(f"/v1/models/{{name}}/{task}", handler, takes_query=True)


def _hot_alias_route(task: str) -> HotRoute:
    async def handler(request: Request) -> Response:
        state = request.app.state
        name = state.settings.default_model(task)
        return await serve_task(request, name, task, InputOptions(), state.registry, state.service, state.settings)

    return HotRoute(f"/v1/{task}", handler, takes_query=True)


HOT_ROUTES = [_hot_model_route(task) for task in TASKS] + [_hot_alias_route(task) for task in TASKS]
"""The same routes on the hot path (app/hotpath.py), for requests without query options."""
