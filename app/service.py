"""The data plane, independent of HTTP and of the wire format: inputs fitted to a graph, and graphs run.

Inputs arrive as float arrays (already parsed by `app.inputs`); `InferenceService.fit_array` fits them to the
graph's input shape and checks them against the card, `run_graph` runs a graph through the `InferenceEngine`.
What each task does with them is `app.tasks`. Any protocol (our `/v1` routes, the Open Inference Protocol) can
sit on it.
"""

from __future__ import annotations

import math

import numpy as np

from app.cards import ModelCard, TensorSpec
from app.codecs import check_values
from app.errors import InvalidInput, PayloadTooLarge
from app.inference import GraphSession, InferenceEngine
from app.settings import Settings


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


class InferenceService:
    """encode / decode / reconstruct / score / denoise / predict on registry entries."""

    def __init__(self, engine: InferenceEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    # -- fitting inputs to the graph ------------------------------------------------------------------------
    def fit_array(self, card: ModelCard, spec: TensorSpec, array: np.ndarray, field_name: str) -> np.ndarray:
        """Check `array` (batch first, any float dtype) and return it as float32 in the graph's input shape.

        Accepted sample shapes: the graph's own; flat when every axis is fixed; [H, W] (or [1, H, W]) for
        image models and flattened-image vector models.
        """
        sample_spec = spec.sample_shape
        sample = array.shape[1:]
        target = self._target_sample_shape(card, sample_spec, sample)
        if target is None:
            accepted = self._accepted_shapes(card, sample_spec)
            raise InvalidInput(
                f"{field_name} holds samples of shape {list(sample)}; model {card.name!r} takes "
                f"{' or '.join(str(s) for s in accepted)}",
                {"field": field_name, "shape": list(array.shape), "accepted_sample_shapes": accepted},
            )
        self._check_dynamic_sizes(card, sample_spec, target, field_name)
        check_values(array, spec, field_name)
        out = array.reshape((array.shape[0], *target))
        return np.ascontiguousarray(out, dtype=spec.numpy_dtype)

    @staticmethod
    def _accepted_shapes(card: ModelCard, sample_spec: list[int | str]) -> list[list[int | str]]:
        shapes: list[list[int | str]] = [list(sample_spec)]
        if all(isinstance(d, int) for d in sample_spec) and len(sample_spec) > 1:
            shapes.append([math.prod(int(d) for d in sample_spec)])
        image = card.input.image
        if card.input.layout in ("vector", "image") and image is not None:
            hw: list[int | str] = [image.height or "height", image.width or "width"]
            if hw != sample_spec[-2:] or len(sample_spec) != 2:
                shapes.append(hw)
        return [s for i, s in enumerate(shapes) if s not in shapes[:i]]

    def _target_sample_shape(
        self, card: ModelCard, sample_spec: list[int | str], sample: tuple[int, ...]
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
            if count == size and (len(sample) == 1 or self._is_image_form(card, sample)):
                return tuple(int(d) for d in sample_spec)
            return None
        # A channel axis of 1 may be left out: [H, W] for [1, H, W].
        if len(sample_spec) == len(sample) + 1 and sample_spec[0] == 1 and fits(sample_spec[1:], sample):
            return (1, *sample)
        return None

    @staticmethod
    def _is_image_form(card: ModelCard, sample: tuple[int, ...]) -> bool:
        image = card.input.image
        if card.input.layout not in ("vector", "image") or image is None:
            return False
        hw = (image.height, image.width)
        return sample == hw or sample == (image.channels, *hw)

    def _check_dynamic_sizes(
        self, card: ModelCard, sample_spec: list[int | str], shape: tuple[int, ...], field_name: str
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
                if got > self._settings.max_sequence_length:
                    raise PayloadTooLarge(
                        f"{field_name}: series have {got} steps; at most {self._settings.max_sequence_length}",
                        {"field": field_name, "limit": self._settings.max_sequence_length},
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
                if got > self._settings.max_image_side:
                    raise PayloadTooLarge(
                        f"{field_name}: image side {got} exceeds {self._settings.max_image_side}",
                        {"field": field_name, "limit": self._settings.max_image_side},
                    )
        if {"height", "width"} <= {d for d in sample_spec if isinstance(d, str)}:
            pixels = shape[-1] * shape[-2]
            if pixels > self._settings.max_image_pixels:
                raise PayloadTooLarge(
                    f"{field_name}: images of {pixels} pixels exceed {self._settings.max_image_pixels}",
                    {"field": field_name, "limit": self._settings.max_image_pixels},
                )

    # -- running graphs ---------------------------------------------------------------------------------------
    async def run_graph(self, graph: GraphSession, array: np.ndarray, task: str) -> dict[str, np.ndarray]:
        """Every output of `graph` on `array` (its one input), through the engine's queue and batcher."""
        return await self._engine.run(graph, {graph.inputs[0].name: array}, task)
