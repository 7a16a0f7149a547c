"""Checking what a request sends, in one place for every protocol: the limits, and fitting inputs to a graph.

`Limits` holds the request limits of the settings and refuses what exceeds them with the service's 413 and
message; `fit_array` checks an array against a graph's input (sample shape, dynamic sizes, values) and returns
it in the graph's shape; `check_values` is the value check (finite, inside the card's range). `/v1` (JSON,
.npy, uploads) and the Open Inference Protocol call the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.cards import ModelCard, TensorSpec
from app.core.errors import InvalidInput, NonFiniteValue, PayloadTooLarge, ValueOutOfRange
from app.settings import Settings


def index_text(field: str, index: Sequence[int]) -> str:
    return field + "".join(f"[{i}]" for i in index)


@dataclass(frozen=True)
class Limits:
    """The request limits in force (from the settings)."""

    max_batch_rows: int
    max_sequence_length: int
    max_image_pixels: int
    max_image_side: int
    max_request_values: int
    max_request_pixels: int
    max_upload_files: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_batch_rows=settings.max_batch_rows,
            max_sequence_length=settings.max_sequence_length,
            max_image_pixels=settings.max_image_pixels,
            max_image_side=settings.max_image_side,
            max_request_values=settings.max_request_values,
            max_request_pixels=settings.max_request_pixels,
            max_upload_files=settings.max_upload_files,
        )

    def check_rows(self, rows: int, what: str, details: dict[str, Any] | None = None) -> None:
        """413 when `what` (e.g. "inputs holds", ".npy array holds") has more samples than one request may."""
        if rows > self.max_batch_rows:
            raise PayloadTooLarge(
                f"{what} {rows} samples; at most {self.max_batch_rows} per request",
                {**(details or {}), "limit": self.max_batch_rows},
            )

    def check_request_pixels(self, pixels: int, what: str) -> None:
        """413 when the images of one upload hold more pixels in all than `max_request_pixels` (from headers)."""
        if pixels > self.max_request_pixels:
            raise PayloadTooLarge(
                f"{what} {pixels} pixels in all; at most {self.max_request_pixels} per request (max_request_pixels)",
                {"pixels": pixels, "limit": self.max_request_pixels},
            )

    def check_request_values(self, values: int, what: str, details: dict[str, Any] | None = None) -> None:
        """413 when a request sends more input values to a graph than `max_request_values`."""
        if values > self.max_request_values:
            raise PayloadTooLarge(
                f"{what} {values} input values; at most {self.max_request_values} per request (max_request_values)",
                {**(details or {}), "values": values, "limit": self.max_request_values},
            )


def image_shape(card: ModelCard, spec: TensorSpec) -> tuple[int, int] | None:
    """(H, W) of one sample as an image, when the tensor is one (vectors are images flattened row-major)."""
    if card.input.layout not in ("vector", "image") or card.input.image is None:
        return None
    sample = spec.sample_shape
    if len(sample) == 3 and sample[0] == 1 and all(isinstance(d, int) for d in sample[1:]):
        return int(sample[1]), int(sample[2])
    h, w = card.input.image.height, card.input.image.width
    if len(sample) == 1 and isinstance(sample[0], int) and h and w and h * w == sample[0]:
        return h, w
    return None


def model_image_target(card: ModelCard, spec: TensorSpec) -> tuple[int, int] | None:
    """The (H, W) an uploaded image must be resized to, or None for a fully convolutional model."""
    if card.input.fully_convolutional:
        return None
    image = card.input.image
    if image is None or not image.height or not image.width:
        raise InvalidInput(f"model {card.name!r} does not take images")
    return image.height, image.width


def fit_array(
    card: ModelCard,
    spec: TensorSpec,
    array: np.ndarray,
    field_name: str,
    limits: Limits,
    *,
    contiguous: bool = True,
) -> np.ndarray:
    """Check `array` (batch first, any float dtype) and return it as float32 in the graph's input shape
    (`contiguous=False`: a view of it when it already is, e.g. a decoded photograph that will be cut into tiles,
    instead of a full-size copy).

    Accepted sample shapes: the graph's own; flat when every axis is fixed; [H, W] (or [1, H, W]) for
    image models and flattened-image vector models.
    """
    sample_spec = spec.sample_shape
    sample = array.shape[1:]
    target = _target_sample_shape(card, sample_spec, sample)
    if target is None:
        accepted = _accepted_shapes(card, sample_spec)
        raise InvalidInput(
            f"{field_name} holds samples of shape {list(sample)}; model {card.name!r} takes "
            f"{' or '.join(str(s) for s in accepted)}",
            {"field": field_name, "shape": list(array.shape), "accepted_sample_shapes": accepted},
        )
    _check_dynamic_sizes(card, sample_spec, target, field_name, limits)
    check_values(array, spec, field_name)
    out = array.reshape((array.shape[0], *target))
    if not contiguous and out.dtype == spec.numpy_dtype:
        return out
    return np.ascontiguousarray(out, dtype=spec.numpy_dtype)


def _accepted_shapes(card: ModelCard, sample_spec: list[int | str]) -> list[list[int | str]]:
    shapes: list[list[int | str]] = [list(sample_spec)]
    if all(isinstance(d, int) for d in sample_spec) and len(sample_spec) > 1:
        shapes.append([math.prod(int(d) for d in sample_spec)])
    image = card.input.image
    # [H, W] when the card gives both sides, or when the graph's channel axis of 1 may be left out (any-size gray
    # images, `_target_sample_shape`); an image section without a size offers no [height, width] of its own.
    hw: list[int | str] | None = None
    if card.input.layout in ("vector", "image") and image is not None and image.height and image.width:
        hw = [image.height, image.width]
    elif len(sample_spec) == 3 and sample_spec[0] == 1 and not all(isinstance(d, int) for d in sample_spec):
        hw = list(sample_spec[1:])
    if hw is not None and (hw != sample_spec[-2:] or len(sample_spec) != 2):
        shapes.append(hw)
    return [s for i, s in enumerate(shapes) if s not in shapes[:i]]


def _target_sample_shape(
    card: ModelCard, sample_spec: list[int | str], sample: tuple[int, ...]
) -> tuple[int, ...] | None:
    def fits(spec_shape: list[int | str], shape: tuple[int, ...]) -> bool:
        return len(spec_shape) == len(shape) and all(
            isinstance(w, str) or w == g for w, g in zip(spec_shape, shape, strict=True)
        )

    if fits(sample_spec, sample):
        return sample
    count = math.prod(sample)
    static = all(isinstance(d, int) for d in sample_spec)
    if static:
        size = math.prod(int(d) for d in sample_spec)
        if count == size and (len(sample) == 1 or _is_image_form(card, sample)):
            return tuple(int(d) for d in sample_spec)
        return None
    # A channel axis of 1 may be left out: [H, W] for [1, H, W].
    if len(sample_spec) == len(sample) + 1 and sample_spec[0] == 1 and fits(sample_spec[1:], sample):
        return (1, *sample)
    return None


def _is_image_form(card: ModelCard, sample: tuple[int, ...]) -> bool:
    image = card.input.image
    if card.input.layout not in ("vector", "image") or image is None:
        return False
    hw = (image.height, image.width)
    return sample == hw or sample == (image.channels, *hw)


def _check_dynamic_sizes(
    card: ModelCard, sample_spec: list[int | str], shape: tuple[int, ...], field_name: str, limits: Limits
) -> None:
    for axis, (want, got) in enumerate(zip(sample_spec, shape, strict=True)):
        if not isinstance(want, str):
            continue
        if want == "time":
            sequence = card.input.sequence
            low = sequence.min_length if sequence else 1
            if got < low:
                raise InvalidInput(
                    f"{field_name}: series have {got} steps; model {card.name!r} needs at least {low}",
                    {"field": field_name, "axis": axis + 1, "min_length": low},
                )
            if got > limits.max_sequence_length:
                raise PayloadTooLarge(
                    f"{field_name}: series have {got} steps; at most {limits.max_sequence_length}",
                    {"field": field_name, "limit": limits.max_sequence_length},
                )
        elif want in ("height", "width"):
            image = card.input.image
            low = (image.min_side if image else None) or 1
            if got < low:
                raise InvalidInput(
                    f"{field_name}: images are {shape[-1]}x{shape[-2]}; model {card.name!r} needs at least "
                    f"{low} pixels per side",
                    {"field": field_name, "axis": axis + 1, "min_side": low},
                )
            if got > limits.max_image_side:
                raise PayloadTooLarge(
                    f"{field_name}: image side {got} exceeds {limits.max_image_side}",
                    {"field": field_name, "limit": limits.max_image_side},
                )
    if {"height", "width"} <= {d for d in sample_spec if isinstance(d, str)}:
        pixels = shape[-1] * shape[-2]
        if pixels > limits.max_image_pixels:
            raise PayloadTooLarge(
                f"{field_name}: images of {pixels} pixels exceed {limits.max_image_pixels}",
                {"field": field_name, "limit": limits.max_image_pixels},
            )


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_values(array: np.ndarray, spec: TensorSpec, field: str) -> None:
    """Finite and inside the card's range, else a 422 naming the field, the index and the allowed range."""
    if array.size:
        # Fast exit, two reductions: NaN fails every comparison and infinities are beyond float32's range, so only
        # a finite, in-range array passes; anything else is located below by the (slower) precise checks.
        low, high = max(spec.low, -_FLOAT32_MAX), min(spec.high, _FLOAT32_MAX)
        if low <= float(array.min()) and float(array.max()) <= high:
            return
    finite = np.isfinite(array)
    if not finite.all():
        index = [int(i) for i in np.argwhere(~finite)[0]]
        value = array[tuple(index)]
        raise NonFiniteValue(
            f"{index_text(field, index)} is {value!s}; values must be finite",
            {"field": field, "index": index, "value": str(value)},
        )
    if array.dtype != np.float32:
        too_big = np.abs(array) > np.finfo(np.float32).max
        if too_big.any():
            index = [int(i) for i in np.argwhere(too_big)[0]]
            raise ValueOutOfRange(
                f"{index_text(field, index)} = {float(array[tuple(index)]):g} does not fit in float32",
                {"field": field, "index": index, "value": float(array[tuple(index)])},
            )
    if not spec.bounded:
        return
    low, high = spec.low, spec.high
    bad = (array < low) | (array > high)
    if bad.any():
        index = [int(i) for i in np.argwhere(bad)[0]]
        value = float(array[tuple(index)])
        allowed = [None if math.isinf(low) else low, None if math.isinf(high) else high]
        hint = ""
        if high == 1.0 and low == 0.0 and float(array.max()) <= 255.0:
            hint = " (pixels are 0-1 here, not 0-255: divide by 255)"
        raise ValueOutOfRange(
            f"{index_text(field, index)} = {value:g} is outside the allowed range {allowed}{hint}",
            {"field": field, "index": index, "value": value, "allowed_range": allowed},
        )
