"""HTTP request -> `InputBatch`: reads the body (bounded), picks the parser by Content-Type, and for images
decodes and preprocesses each upload. The formats:

- `application/json`: `{"inputs": [...]}`, a batch of samples (flat vectors or nested arrays);
- `application/x-npy`: one float32 C-order array, batch first (never unpickled);
- `multipart/form-data`: one or more image files (any field name; `file` in the docs);
- `image/*`: one image as the raw body.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from app.api.context import AppContext, context_of
from app.api.formats import JSON, MULTIPART, NPY, json_tensor, media_type, npy_tensor
from app.core.budget import IMAGE_MEMORY_STATE, Reservation, request_reservation
from app.core.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.core.images import (
    DECODE_BYTES_PER_PIXEL,
    PHOTO_BYTES_PER_PIXEL,
    DecodedImage,
    decode_image,
    header_size,
    resize,
)
from app.core.preprocess import Preprocess, prepare_image
from app.core.registry import ModelEntry
from app.core.tasks import TASKS, InputBatch
from app.core.validation import Limits, fit_array, model_image_target
from app.settings import Settings

ACCEPTED_TYPES = (JSON, NPY, MULTIPART, "image/*")
PARSE_ON_LOOP_JSON_BYTES = 64 * 1024
"""JSON bodies up to this size parse on the event loop (tens of microseconds); larger ones go to a worker thread
so that they do not stall other requests (a 64-row MNIST batch, 340 KB, takes milliseconds)."""
PARSE_ON_LOOP_BINARY_BYTES = 1024 * 1024
"""Binary bodies (.npy, V2 binary tensors) up to this size are read on the event loop: no parsing, one pass of
value checks (~0.1 ms per MB); the thread hop would cost more than it saves."""


@dataclass(frozen=True)
class InputOptions:
    """Query options of the inference routes."""

    preprocess: Preprocess = "auto"
    invert: bool | None = None
    given: dict[str, float] = field(default_factory=dict)
    """Values for the task's extra graph inputs (e.g. `sigma`), checked against the graph here."""


async def read_body(request: Request) -> bytes:
    """The whole body. Its size limit is the admission middleware's (app/asgi/admission.py), decided from
    `Content-Length` before reading and counted while streaming; this only collects the chunks."""
    # `request.receive` directly, as `Request.stream()` does minus its async generator (a few microseconds per
    # request on the hot path); a disconnect is Starlette's ClientDisconnect, as there.
    receive = request.receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


JSON_BYTES_PER_VALUE = 48
"""Memory a JSON number costs once parsed, at most: a Python float (24 B) and its list slot (8 B), then the
float64 and float32 arrays made of it. A body's values are at most its commas plus one, so a 32 MiB body of
`0,0,0,...` (16 Mi values, ~770 MiB parsed) is known before it is parsed."""


async def reserve_parsing(request: Request, body: bytes, json_bytes: int) -> None:
    """Reserve what parsing `body` will cost from the request memory budget (503 or 413 when it does not fit): its
    first `json_bytes` are JSON (values estimated from their commas), the rest binary tensors (a float32 view, at
    most one converted copy)."""
    reservation = request_reservation(request.scope)
    if reservation is None:
        return
    if not json_bytes:
        values = 0
    elif json_bytes < PARSE_ON_LOOP_JSON_BYTES:
        values = body.count(b",", 0, json_bytes) + 1
    else:  # ~20 ms for 32 MiB: counted where the parse itself will run, not on the event loop
        values = await context_of(request).offload.run(body.count, b",", 0, json_bytes) + 1
    need = 2 * len(body) + values * JSON_BYTES_PER_VALUE
    if not reservation.try_grow(need - reservation.held):
        await reservation.ensure(need, f"parsing a body of {len(body)} bytes")


async def reserve_decoding(
    request: Request, entry: ModelEntry, task: str, uploads: list[tuple[str | None, bytes]], ctx: AppContext
) -> None:
    """Decide from the image headers alone, before any pixel is decoded: the values the model will get (413
    beyond `max_request_values`; a tiled model's are checked per tile instead) and the memory the images hold
    until the answer is sent, reserved from the image memory budget (413 when it could never fit, a wait and
    then 503 when it does not fit now). Gray uploads to a digit model are decoded in turn, so their peak is the
    largest image's decoding plus every result; a photograph to a tiled denoiser holds its pixels, its denoised
    copy and its encoded answer at once (`PHOTO_BYTES_PER_PIXEL`)."""
    card = entry.card
    assert card is not None
    limits = ctx.limits
    graph = entry.graph_for(task)
    spec = graph.inputs[0]
    target = model_image_target(card, spec)
    tiled = target is None and ctx.service.tile_side(graph) > 0
    values = largest = total = 0
    for _, data in uploads:
        size = header_size(data)
        if size is None:
            continue  # the decoder reports what is wrong with it
        pixels = size[0] * size[1]
        if pixels > limits.max_image_pixels:
            continue  # refused by the decoder with its size in the message
        largest = max(largest, pixels)
        total += pixels
        if not tiled:
            values += target[0] * target[1] if target is not None else pixels
    limits.check_request_pixels(total, f"the {len(uploads)} images hold")
    limits.check_request_values(values, f"the {len(uploads)} images make")
    if card.input.image is not None and card.input.image.channels == 3:
        need = total * PHOTO_BYTES_PER_PIXEL
    else:
        need = largest * DECODE_BYTES_PER_PIXEL + values * 8
    what = f"decoding {len(uploads)} image(s) of {total} pixels"
    state = request.scope.setdefault("state", {})
    reservation = state.get(IMAGE_MEMORY_STATE)
    if reservation is None:
        reservation = state[IMAGE_MEMORY_STATE] = Reservation(ctx.image_memory)
    if not reservation.try_grow(need - reservation.held):
        await reservation.ensure(need, what)


def takes_images(entry: ModelEntry, task: str) -> bool:
    """Whether image uploads are accepted: the task takes images and the model has an image form, either any size
    (fully convolutional) or a height and width to resize to (`model_image_target`); e.g. a vector model fitted
    on a table has none."""
    card = entry.card
    assert card is not None
    image = card.input.image
    if not TASKS[task].takes_images or card.input.layout not in ("vector", "image") or image is None:
        return False
    return card.input.fully_convolutional or bool(image.height and image.width)


async def _multipart_files(request: Request, body: bytes, settings: Settings) -> list[tuple[str | None, bytes]]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers,
        stream(),
        max_files=settings.max_upload_files,
        max_fields=settings.max_form_fields,
        max_part_size=settings.max_form_field_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(
                f"too many files in the multipart body: at most {settings.max_upload_files}",
                {"limit": settings.max_upload_files},
            ) from exc
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    files: list[tuple[str | None, bytes]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename, await value.read()))
            else:
                raise InvalidInput(
                    f"unexpected form field {key!r}: the form holds only image files; options such as "
                    "preprocess go in the query string",
                    {"field": key},
                )
    finally:
        await form.close()
    if not files:
        raise InvalidInput("the multipart body holds no file; send the image as a file part named 'file'")
    return files


async def read_inputs(
    request: Request, entry: ModelEntry, task: str, options: InputOptions, ctx: AppContext
) -> InputBatch:
    """Parse the request body into the batch the task's graph takes."""
    takes = {spec.name for spec in entry.graph_for(task).inputs[1:]}
    for name in options.given:
        if name not in takes:
            raise InvalidInput(
                f"model {entry.name!r} takes no {name}: its graph has no {name!r} input",
                {"field": name, "model": entry.name},
            )
    settings, limits = ctx.settings, ctx.limits
    card = entry.card
    assert card is not None
    spec = entry.graph_for(task).inputs[0]
    ctype = media_type(request.headers.get("content-type"))
    images_ok = takes_images(entry, task)
    offered = ", ".join(t for t in ACCEPTED_TYPES if images_ok or t in (JSON, NPY))
    if not ctype:
        raise UnsupportedMediaType(f"missing Content-Type; send one of {offered}", {"accepted": offered})
    is_image_body = ctype == MULTIPART or ctype.startswith("image/")
    if ctype not in (JSON, NPY) and not ctype.endswith("+json") and not is_image_body:
        raise UnsupportedMediaType(
            f"Content-Type {ctype} is not accepted; send one of {offered}", {"accepted": offered}
        )
    if is_image_body and not images_ok:
        what = TASKS[task].input_kind or f"{card.input.layout}s"
        raise UnsupportedMediaType(
            f"{task} on model {card.name!r} takes {what}, not images; send {JSON} or {NPY}", {"accepted": offered}
        )
    if not is_image_body and (options.preprocess not in ("auto", "none") or options.invert is not None):
        raise BadRequest("preprocess and invert apply to image uploads only (multipart/form-data or image/*)")
    body = await read_body(request)
    if not is_image_body:
        await reserve_parsing(request, body, 0 if ctype == NPY else len(body))
        source, field_name = ("npy", "body") if ctype == NPY else ("json", "inputs")

        def parse() -> InputBatch:
            reader = npy_tensor if source == "npy" else json_tensor
            array = reader(body, limits)
            return InputBatch([fit_array(card, spec, array, field_name, limits)], source, given=options.given)

        # Small bodies parse in microseconds on the loop; big ones would stall every other request.
        on_loop = len(body) < (PARSE_ON_LOOP_BINARY_BYTES if source == "npy" else PARSE_ON_LOOP_JSON_BYTES)
        return parse() if on_loop else await ctx.offload.run(parse)
    uploads: list[tuple[str | None, bytes]] = (
        await _multipart_files(request, body, settings) if ctype == MULTIPART else [(None, body)]
    )
    limits.check_rows(len(uploads), "the upload holds")
    await reserve_decoding(request, entry, task, uploads, ctx)
    return await ctx.offload.run(_image_batch, entry, task, uploads, options, limits)


def _colour_sample(
    decoded: DecodedImage, mode: Preprocess, target: tuple[int, int] | None, min_side: int, field_name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """A decoded upload as a colour model's [3, H, W] sample: RGB as it is, gray as 3 identical channels; resized
    bilinearly, channel by channel, to a fixed-size model's `target` (H, W) as gray uploads are (`prepare_image`),
    never for a fully convolutional model (`target` None)."""
    pixels = decoded.pixels
    height, width = pixels.shape[:2]
    if mode == "auto":
        mode = "resize" if target is not None else "none"
    resized = None
    if target is not None and (height, width) != target:
        if mode == "none":
            raise InvalidInput(
                f"{field_name}: image is {width}x{height} but the model takes {target[1]}x{target[0]}; leave out "
                "preprocess=none to have it resized",
                {"field": field_name, "size": [width, height], "model_size": [target[1], target[0]]},
            )
        planes = pixels.transpose(2, 0, 1) if decoded.is_colour else pixels[None]
        out = np.stack([resize(np.ascontiguousarray(plane), *target) for plane in planes])
        pixels = out.transpose(1, 2, 0) if decoded.is_colour else out[0]
        resized = {"from": [width, height], "to": [target[1], target[0]], "method": "bilinear"}
        height, width = target
    elif min(height, width) < min_side:
        raise InvalidInput(
            f"{field_name}: image is {width}x{height}; this model needs at least {min_side} pixels per side",
            {"field": field_name, "min_side": min_side},
        )
    # Views, not copies: a 24-megapixel photograph is 288 MiB of float32 pixels; tiles are cut from the view.
    sample = pixels.transpose(2, 0, 1) if decoded.is_colour else np.broadcast_to(pixels[None], (3, height, width))
    steps: dict[str, Any] = {"preprocess": mode, "inverted": False}
    if resized is not None:
        steps["resized"] = resized
    steps |= {
        "model_size": [width, height],
        "channels": "rgb" if decoded.is_colour else "gray, as 3 identical channels (answered gray)",
        "bits": decoded.bits,
        "alpha": decoded.alpha is not None,
    }
    return sample, steps


def _image_batch(
    entry: ModelEntry,
    task: str,
    uploads: list[tuple[str | None, bytes]],
    options: InputOptions,
    limits: Limits,
) -> InputBatch:
    """Decode and preprocess every upload (in a worker thread: Pillow work is CPU-bound)."""
    card = entry.card
    assert card is not None and card.input.image is not None
    spec = entry.graph_for(task).inputs[0]
    target = model_image_target(card, spec)
    min_side = card.input.image.min_side or 1
    samples: list[np.ndarray] = []
    reports = []
    colour = card.input.image.channels == 3
    if colour and (options.preprocess not in ("auto", "none") or options.invert):
        raise InvalidInput(
            f"model {card.name!r} takes colour images as they are: preprocess and invert apply to gray models",
            {"field": "preprocess"},
        )
    for i, (filename, data) in enumerate(uploads):
        field_name = "file" if len(uploads) == 1 else f"file[{i}]"
        decoded = decode_image(
            data,
            max_pixels=limits.max_image_pixels,
            max_side=limits.max_image_side,
            filename=filename,
            field_name=field_name,
            colour=colour,
        )
        if colour:
            pixels, steps = _colour_sample(decoded, options.preprocess, target, min_side, field_name)
            reports.append(decoded.report(steps))
            samples.append(pixels)
            continue
        pixels, steps = prepare_image(decoded.pixels, options.preprocess, target, min_side, options.invert)
        reports.append(decoded.report(steps))
        # [C, H, W] image tensors get their channel axis; vector models take the image flattened row-major.
        sample_shape = [d if isinstance(d, int) else -1 for d in spec.sample_shape]
        samples.append(pixels[None, :, :] if len(sample_shape) == 3 else pixels.reshape(sample_shape))
    shapes = {s.shape for s in samples}
    if len(samples) == 1:  # no stacking copy
        parts = [fit_array(card, spec, samples[0][None], "file", limits, contiguous=not colour)]
    elif len(shapes) == 1:
        parts = [fit_array(card, spec, np.stack(samples), "file", limits)]
    else:
        parts = [
            fit_array(card, spec, s[None], f"file[{i}]", limits, contiguous=not colour) for i, s in enumerate(samples)
        ]
    return InputBatch(parts, "image", images=reports, given=options.given)
