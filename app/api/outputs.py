"""`TaskResult` -> HTTP response in the negotiated format: JSON, PNG (one image), `.npy` or `.npz`.

The format is chosen before inference (`choose_format`), so a request that cannot be answered in the format it
asks for costs no model time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from app.api.formats import (
    IMAGE_FORMATS,
    JPEG,
    JSON,
    NPY,
    NPZ,
    PNG,
    WEBP,
    encode_image,
    negotiate,
    to_json,
    to_npy,
    to_npz,
)
from app.core.errors import NotAcceptable
from app.core.registry import ModelEntry
from app.core.tasks import TASKS, InputBatch, TaskResult
from app.core.validation import image_shape


def _png_problem(entry: ModelEntry, task: str, batch: InputBatch) -> str | None:
    card = entry.card
    assert card is not None
    definition = TASKS[task]
    if not definition.gives_images:
        return f"{task} answers with {definition.main_output}, not an image; ask for {JSON} or {NPY}"
    spec = entry.graph_for(task).outputs[0]
    if not definition.returns_uploads and image_shape(card, spec) is None:
        return f"model {card.name!r} does not produce images; ask for {JSON} or {NPY}"
    if batch.rows != 1:
        return (
            f"{PNG} holds one image and this request holds {batch.rows}; send one image per request, "
            f"or ask for {JSON} or {NPY}"
        )
    return None


def choose_format(entry: ModelEntry, task: str, batch: InputBatch, accept: str | None) -> str:
    """The response media type for this request (406 with the reason when none can be produced)."""
    png_problem = _png_problem(entry, task, batch)
    offered = [JSON, NPY, NPZ]
    uploads_back = TASKS[task].returns_uploads and batch.source == "image"
    if png_problem is None:
        offered.append(PNG)
        if uploads_back:  # an upload comes back as it came: JPEG as JPEG, WebP as WebP (Accept may say otherwise)
            offered += [JPEG, WEBP]
    if len(batch.parts) > 1 or _channels_differ(batch):
        offered.remove(NPY)  # images of different sizes make no single array
        offered.remove(NPZ)
    default = JSON
    if uploads_back and png_problem is None:
        upload_format = batch.images[0].format if batch.images else "PNG"
        default = {"JPEG": JPEG, "WEBP": WEBP}.get(upload_format, PNG)
    try:
        return negotiate(accept, offered, default)
    except NotAcceptable as exc:
        if png_problem and accept and PNG in accept.lower():
            raise NotAcceptable(png_problem, {"accept": accept, "available": offered}) from exc
        if NPY not in offered and accept and NPY in accept.lower():
            raise NotAcceptable(
                f"the images differ in size, so they make no single {NPY} array; ask for {JSON}",
                {"accept": accept, "available": offered},
            ) from exc
        raise


def _model_headers(result: TaskResult) -> dict[str, str]:
    card = result.card
    # A task may add its own (denoise: the noise level it used, X-Sigma / X-Sigma-Source).
    return {
        "X-Model": card.name,
        "X-Model-Version": card.version,
        "X-Task": result.task,
        **result.extra.get("headers", {}),
    }


def _image_headers(result: TaskResult) -> dict[str, str]:
    batch = result.batch
    if batch.images is None or len(batch.images) != 1:
        return {}
    report = batch.images[0]
    model_w, model_h = report.model_size
    width, height = report.size
    if report.preprocess == "mnist":
        resize_text = f"mnist recipe {width}x{height} -> {model_w}x{model_h}"
    elif report.resized_from is not None:
        resize_text = f"bilinear {width}x{height} -> {model_w}x{model_h}"
        if TASKS[result.task].returns_uploads:
            resize_text += f" -> {width}x{height}"
    else:
        resize_text = "none (native size)"
    return {
        "X-Image-Size": f"{width}x{height}",
        "X-Model-Input-Size": f"{model_w}x{model_h}",
        "X-Resize": resize_text,
        "X-Preprocess": report.preprocess,
        "X-Inverted": "true" if report.inverted else "false",
    }


def _channels_differ(batch: InputBatch) -> bool:
    """Gray and colour uploads to a colour model come back with 1 and 3 channels: no single array."""
    return batch.images is not None and len({report.colour for report in batch.images}) > 1


def _primary_array(result: TaskResult) -> np.ndarray:
    value = result.outputs[TASKS[result.task].main_output]
    if isinstance(value, list):
        parts: list[np.ndarray] = value
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.asarray(value)


def _as_image(result: TaskResult) -> np.ndarray:
    """The answer's one image: [H, W] gray, or [H, W, 3] colour."""
    value = result.outputs[TASKS[result.task].main_output]
    array: np.ndarray = (value[0] if isinstance(value, list) else np.asarray(value))[0]
    if array.ndim == 3:  # [1, H, W] or [3, H, W]
        return np.asarray(array[0]) if array.shape[0] == 1 else array.transpose(1, 2, 0)  # a view: encode_image copes
    card = result.card
    hw = image_shape(card, result.entry.graph_for(result.task).outputs[0])
    assert hw is not None
    return array.reshape(hw)


def json_payload(result: TaskResult) -> dict[str, Any]:
    """The JSON body of a task (numpy arrays are serialised by orjson directly)."""
    card = result.card
    task = result.task
    payload: dict[str, Any] = {"model": card.name, "model_version": card.version, "task": task}
    TASKS[task].payload(result, payload)
    if result.batch.images is not None:
        payload["inputs"] = [report.details for report in result.batch.images]
    return payload


def render(result: TaskResult, fmt: str) -> Response:
    """The response for `result` in media type `fmt` (one of those `choose_format` offers)."""
    headers = _model_headers(result)
    if fmt in IMAGE_FORMATS:
        headers.update(_image_headers(result))
        if "scores" in result.outputs:  # reconstruct: the image's error beside it
            headers["X-Score"] = f"{float(result.outputs['scores'][0]):.9g}"
        images = result.batch.images
        report = images[0] if images and TASKS[result.task].returns_uploads else None
        data = encode_image(
            _as_image(result),
            IMAGE_FORMATS[fmt],
            bits=report.bits if report else 8,
            alpha=report.alpha if report else None,
            icc_profile=report.icc_profile if report else None,
        )
        return Response(data, media_type=fmt, headers=headers)
    if fmt == NPY:
        headers["Content-Disposition"] = f'attachment; filename="{result.card.name}-{result.task}.npy"'
        return Response(to_npy(_primary_array(result)), media_type=NPY, headers=headers)
    if fmt == NPZ:
        arrays = {}
        for key, value in result.outputs.items():
            if isinstance(value, list):
                value = value[0]
            arrays[key] = np.asarray(value)
        headers["Content-Disposition"] = f'attachment; filename="{result.card.name}-{result.task}.npz"'
        return Response(to_npz(arrays), media_type=NPZ, headers=headers)
    return Response(to_json(json_payload(result)), media_type=JSON, headers=headers)
