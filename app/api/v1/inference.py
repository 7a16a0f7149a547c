"""Inference routes: `POST /v1/models/{name}/{task}` for every task (on the model's default version),
`POST /v1/models/{name}/versions/{version}/{task}` on a given version, and `POST /v1/{task}` on the task's
default model: entries of the endpoint table (app/api/endpoints.py), one handler for all of them (`serve_task`),
parse -> run -> render; the work lives in `app.api.inputs`, `app.core.tasks` and `app.api.outputs`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from starlette.responses import Response

from app.api.context import AppContext
from app.api.endpoints import Endpoint, Param
from app.api.formats import IMAGE_FORMATS, JSON, NPY, NPZ, PNG
from app.api.inputs import InputOptions, read_inputs
from app.api.outputs import choose_format, render
from app.api.schemas import ErrorResponse, TensorRequest
from app.core.preprocess import Preprocess
from app.core.tasks import TASKS, Task, run_task

ModelName = Annotated[str, Path(description="model name, as listed by `GET /v1/models`", examples=["dense"])]
ModelVersion = Annotated[
    str, Path(description="model version, as listed by `GET /v1/models/{name}/versions`", examples=["1"])
]
PreprocessQuery = Annotated[
    Preprocess,
    Query(
        description="image uploads only. `auto`: `resize` for fixed-size models, `none` for fully convolutional "
        "ones; `none`: as decoded; `resize`: bilinear to the model's size; `mnist`: invert if dark on light, crop "
        "to the digit, fit in 20x20, centre by mass in 28x28"
    ),
]
EXTRA_INPUT_QUERIES: dict[str, Any] = {
    "sigma": Annotated[
        float | None,
        Query(
            ge=0.0,
            le=255.0,
            description="models with a noise-level input (the photograph denoiser): the noise's standard deviation "
            "on the 0-255 scale, when known; estimated from each image otherwise (the answer says which, in "
            "`X-Sigma` / `X-Sigma-Source` and the JSON's `sigma` / `sigma_source`)",
        ),
    ],
}
"""The query option of each extra graph input a task may feed (`Task.extra_inputs`)."""
TASK_OPTION_QUERIES: dict[str, Any] = {
    "threshold": Annotated[
        float | None,
        Query(
            allow_inf_nan=False,
            description="anomaly threshold for this request, in the score's units (instead of the card's): "
            "`anomalous = score > threshold`",
        ),
    ],
    "quantile": Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="anomaly threshold for this request as a quantile of the validation scores the card "
            "records (e.g. 0.95): any quantile when the card stores their grid (models made by `training fit`), "
            "else one of the card's named ones",
        ),
    ],
}
"""The query options of a task that are not graph inputs (`Task.options`)."""
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
    ctx: AppContext,
    *,
    task: str,
    name: str | None = None,
    version: str | None = None,
    preprocess: Preprocess = "auto",
    invert: bool | None = None,
    **given: float | None,
) -> Response:
    """Parse the request, run the task on the model (the task's default model without `name`; its default
    version without `version`), answer in the negotiated format."""
    registry = ctx.registry
    if name is None:
        name = ctx.settings.default_model(task)
    state = request.state
    state.model = registry.record(name).name
    entry = registry.get(name, version)  # taken once: the default version may be swapped while this runs
    state.model_version = str(entry.version)
    state.task = task
    if not entry.ready:
        entry = registry.serving(name, version)  # the 503 with the reason
    entry.graph_for(task)  # 404 before the body is read when the model has no such task
    chosen = {k: v for k, v in given.items() if v is not None}
    task_options = {k: chosen.pop(k) for k in TASKS[task].options if k in chosen}
    options = InputOptions(preprocess=preprocess, invert=invert, given=chosen)
    # Counted in (no await since the lookup): an unload waits for this request before it frees the sessions.
    entry.in_flight += 1
    try:
        batch = await read_inputs(request, entry, task, options, ctx)
        batch.options = task_options
        fmt = choose_format(entry, task, batch, request.headers.get("accept"))
        result = await run_task(ctx.service, entry, task, batch)
        if fmt in IMAGE_FORMATS:  # encoding a PNG, JPEG or WebP takes milliseconds per megapixel: off the loop
            return await ctx.offload.run(render, result, fmt)
        return render(result, fmt)
    finally:
        entry.in_flight -= 1


def _note(task: str) -> str:
    uploads = ", `multipart/form-data` image files (field `file`) or a raw `image/*` body"
    images = uploads if TASKS[task].takes_images else ""
    png = ", `image/png` (one image)" if TASKS[task].gives_images else ""
    return FORMATS_NOTE.format(images=images, png=png)


def _endpoints(task: Task) -> list[Endpoint]:
    name = task.name
    options = [Param("preprocess", PreprocessQuery, "auto"), Param("invert", InvertQuery, None)]
    query = (
        (options if task.takes_images else [])
        + [Param(name, EXTRA_INPUT_QUERIES[name], None) for name in task.extra_inputs]
        + [Param(name, TASK_OPTION_QUERIES[name], None) for name in task.options]
    )
    openapi = {"openapi_extra": openapi_for(name), "responses": responses_for(name), "response_model": None}
    return [
        Endpoint(
            "POST",
            f"/v1/models/{{name}}/{name}",
            f"{name}_model",
            serve_task,
            task.summary,
            task.description + _note(name),
            tags=["inference"],
            params=[Param("name", ModelName), *query],
            bound={"task": name},
            hot=True,
            openapi={**openapi, "operation_id": f"{name}_model"},
        ),
        Endpoint(
            "POST",
            f"/v1/models/{{name}}/versions/{{version}}/{name}",
            f"{name}_model_version",
            serve_task,
            f"{task.summary} (a version)",
            f"`POST /v1/models/{{name}}/{name}` on that version of the model (404 `model_not_found` when it has "
            "no such version; `X-Model-Version` and the JSON's `model_version` name it). "
            + task.description
            + _note(name),
            tags=["inference"],
            params=[Param("name", ModelName), Param("version", ModelVersion), *query],
            bound={"task": name},
            hot=True,
            openapi={**openapi, "operation_id": f"{name}_model_version"},
        ),
        Endpoint(
            "POST",
            f"/v1/{name}",
            f"{name}_default",
            serve_task,
            f"{task.summary} (default model)",
            f"`POST /v1/models/{{default}}/{name}` on the default model of the task (setting "
            f"`AE_DEFAULT_{name.upper()}_MODEL`). " + task.description + _note(name),
            tags=["inference (default models)"],
            params=query,
            bound={"task": name},
            hot=True,
            openapi={**openapi, "operation_id": f"{name}_default"},
        ),
    ]


ENDPOINTS = [endpoint for task in TASKS.values() for endpoint in _endpoints(task)]
"""`POST /v1/models/{name}/{task}`, `POST /v1/models/{name}/versions/{version}/{task}` and `POST /v1/{task}` for
every task (app/api/endpoints.py builds the FastAPI
routes and the hot path's from these)."""
