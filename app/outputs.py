"""`TaskResult` -> HTTP response in the negotiated format: JSON, PNG (one image), `.npy` or `.npz`.

The format is chosen before inference (`choose_format`), so a request that cannot be answered in the format it
asks for costs no model time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from app.codecs import JSON, NPY, NPZ, PNG, negotiate, to_json, to_npy, to_npz, to_png
from app.errors import NotAcceptable
from app.registry import ModelEntry
from app.service import InputBatch, TaskResult, image_shape

IMAGE_TASKS = ("decode", "reconstruct", "denoise")
PRIMARY = {
    "encode": "latent",
    "decode": "reconstruction",
    "reconstruct": "reconstruction",
    "score": "scores",
    "denoise": "denoised",
    "predict": "forecast",
}


def _png_problem(entry: ModelEntry, task: str, batch: InputBatch) -> str | None:
    card = entry.card
    assert card is not None
    if task not in IMAGE_TASKS:
        return f"{task} answers with {PRIMARY[task]}, not an image; ask for {JSON} or {NPY}"
    spec = entry.graph_for(task).outputs[0]
    if task != "denoise" and image_shape(card, spec) is None:
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
    if png_problem is None:
        offered.append(PNG)
    if task == "denoise" and len(batch.parts) > 1:
        offered.remove(NPY)  # images of different sizes make no single array
        offered.remove(NPZ)
    default = PNG if task == "denoise" and batch.source == "image" and png_problem is None else JSON
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
    return {"X-Model": card.name, "X-Model-Version": card.version, "X-Task": result.task}


def _image_headers(result: TaskResult) -> dict[str, str]:
    batch = result.batch
    if batch.images is None or len(batch.images) != 1:
        return {}
    report = batch.images[0]
    model_w, model_h = report.get("model_size", report["size"])
    width, height = report["size"]
    resized = report.get("resized")
    if report.get("preprocess") == "mnist":
        resize_text = f"mnist recipe {width}x{height} -> {model_w}x{model_h}"
    elif resized:
        resize_text = f"bilinear {width}x{height} -> {model_w}x{model_h}"
        if result.task == "denoise":
            resize_text += f" -> {width}x{height}"
    else:
        resize_text = "none (native size)"
    return {
        "X-Image-Size": f"{width}x{height}",
        "X-Model-Input-Size": f"{model_w}x{model_h}",
        "X-Resize": resize_text,
        "X-Preprocess": str(report.get("preprocess", "none")),
        "X-Inverted": "true" if report.get("inverted") else "false",
    }


def _primary_array(result: TaskResult) -> np.ndarray:
    value = result.outputs[PRIMARY[result.task]]
    if isinstance(value, list):
        parts: list[np.ndarray] = value
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.asarray(value)


def _as_image(result: TaskResult) -> np.ndarray:
    array: np.ndarray = _primary_array(result)[0]
    if array.ndim == 3:  # [1, H, W]
        return np.asarray(array[0])
    card = result.card
    hw = image_shape(card, result.entry.graph_for(result.task).outputs[0])
    assert hw is not None
    return array.reshape(hw)


def json_payload(result: TaskResult) -> dict[str, Any]:
    """The JSON body of a task (numpy arrays are serialised by orjson directly)."""
    card = result.card
    task = result.task
    payload: dict[str, Any] = {"model": card.name, "model_version": card.version, "task": task}
    outputs = result.outputs
    if task == "denoise":
        parts = outputs["denoised"]
        shapes = [list(img.shape) for part in parts for img in part]
        payload["denoised"] = [img for part in parts for img in part] if len(parts) > 1 else parts[0]
        payload["shape"] = [result.batch.rows, *shapes[0]] if len(parts) == 1 else None
        payload["shapes"] = shapes
    elif task == "score":
        payload["scores"] = outputs["scores"]
        payload["anomalous"] = outputs["anomalous"]
        assert card.anomaly is not None
        payload["threshold"] = result.extra["threshold"]
        payload["threshold_rule"] = card.anomaly.threshold_rule
        payload["score_description"] = card.anomaly.score
        for key in ("window", "windows", "worst_window"):
            payload[key] = result.extra.get(key)
    else:
        key = PRIMARY[task]
        payload[key] = outputs[key]
        payload["shape"] = list(outputs[key].shape)
        if task == "reconstruct":
            payload["scores"] = outputs["scores"]
        if task == "predict":
            sequence = card.input.sequence
            assert card.forecast is not None
            payload["channel_names"] = sequence.channel_names if sequence else []
            payload["horizon"] = card.forecast.horizon
            payload["step_seconds"] = card.forecast.step_seconds
            payload["steps_used"] = result.extra["steps_used"]
            payload["notes"] = result.extra["notes"]
    if result.batch.images is not None:
        payload["inputs"] = result.batch.images
    return payload


def render(result: TaskResult, fmt: str) -> Response:
    """The response for `result` in media type `fmt` (one of those `choose_format` offers)."""
    headers = _model_headers(result)
    if fmt == PNG:
        headers.update(_image_headers(result))
        if result.task == "reconstruct":
            headers["X-Score"] = f"{float(result.outputs['scores'][0]):.9g}"
        return Response(to_png(_as_image(result)), media_type=PNG, headers=headers)
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
