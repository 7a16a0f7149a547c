"""The data plane: what each task does with a model, independent of HTTP and of the wire format.

Inputs arrive as float arrays (already parsed by `app.inputs`); this module fits them to the graph's input
shape, checks them against the card, runs the graph through the `InferenceEngine` and returns the outputs
named by their role in the task. Any protocol (our `/v1` routes, the Open Inference Protocol) can sit on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.cards import ModelCard, TensorSpec
from app.codecs import check_values
from app.errors import InvalidInput, PayloadTooLarge
from app.images import resize
from app.inference import GraphSession, InferenceEngine
from app.registry import ModelEntry
from app.settings import Settings


@dataclass
class InputBatch:
    """A request's samples as float32 arrays in the graph's input shape.

    Usually one array; several when images of different sizes go to a fully convolutional model (each runs
    on its own). `images` holds what decoding and preprocessing did to each uploaded image.
    """

    parts: list[np.ndarray]
    source: str
    images: list[dict[str, Any]] | None = None
    inverted: list[bool] = field(default_factory=list)
    source_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each upload

    @property
    def rows(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class TaskResult:
    """Outputs by role (`latent`, `reconstruction`, `scores`, `denoised`, `forecast`...) plus metadata."""

    entry: ModelEntry
    task: str
    outputs: dict[str, Any]
    batch: InputBatch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def card(self) -> ModelCard:
        assert self.entry.card is not None
        return self.entry.card


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

    # -- tasks ----------------------------------------------------------------------------------------------
    async def _run(self, graph: GraphSession, array: np.ndarray, task: str) -> dict[str, np.ndarray]:
        return await self._engine.run(graph, {graph.inputs[0].name: array}, task)

    async def _run_parts(self, graph: GraphSession, batch: InputBatch, task: str) -> list[dict[str, np.ndarray]]:
        return [await self._run(graph, part, task) for part in batch.parts]

    @staticmethod
    def _single(batch: InputBatch) -> np.ndarray:
        return batch.parts[0] if len(batch.parts) == 1 else np.concatenate(batch.parts)

    async def encode(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        graph = entry.graph_for("encode")
        out = await self._run(graph, self._single(batch), "encode")
        return TaskResult(entry, "encode", {"latent": out[graph.outputs[0].name]}, batch)

    async def decode(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        graph = entry.graph_for("decode")
        out = await self._run(graph, self._single(batch), "decode")
        return TaskResult(entry, "decode", {"reconstruction": out[graph.outputs[0].name]}, batch)

    async def reconstruct(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        graph = entry.graph_for("reconstruct")
        out = await self._run(graph, self._single(batch), "reconstruct")
        return TaskResult(
            entry, "reconstruct", {"reconstruction": out["reconstruction"], "scores": out["score"]}, batch
        )

    async def score(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        """Per-sample anomaly scores; series longer than the card's window are scored in sliding windows."""
        graph = entry.graph_for("score")
        card = entry.card
        assert card is not None and card.anomaly is not None
        array = self._single(batch)
        sequence = card.input.sequence
        threshold = float(card.anomaly.threshold)
        extra: dict[str, Any] = {"threshold": threshold}
        if card.input.layout == "sequence" and sequence is not None:
            steps = array.shape[1]
            starts = window_starts(steps, sequence.window, sequence.stride)
            length = min(steps, sequence.window)
            windows = np.stack([array[:, s : s + length] for s in starts], axis=1)  # [N, W, length, C]
            flat = np.ascontiguousarray(windows.reshape(-1, length, array.shape[2]))
            per_window = (await self._run(graph, flat, "score"))["score"].reshape(len(array), len(starts))
            worst = per_window.argmax(axis=1)
            scores = per_window[np.arange(len(array)), worst]
            extra["windows"] = [
                [{"start": s, "end": s + length, "score": float(v)} for s, v in zip(starts, row, strict=True)]
                for row in per_window
            ]
            extra["worst_window"] = [
                {"start": starts[i], "end": starts[i] + length, "score": float(row[i])}
                for i, row in zip(worst, per_window, strict=True)
            ]
            extra["window"] = {"length": sequence.window, "stride": sequence.stride}
        else:
            scores = (await self._run(graph, array, "score"))["score"]
        outputs = {"scores": scores, "anomalous": scores > threshold}
        return TaskResult(entry, "score", outputs, batch, extra)

    async def denoise(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        graph = entry.graph_for("denoise")
        results = await self._run_parts(graph, batch, "denoise")
        parts = [r["denoised"] for r in results]
        if batch.images is not None:
            parts = self._back_to_uploads(parts, batch)
        return TaskResult(entry, "denoise", {"denoised": parts}, batch)

    @staticmethod
    def _back_to_uploads(parts: list[np.ndarray], batch: InputBatch) -> list[np.ndarray]:
        """Undo what preprocessing did to each upload (inversion, resizing) so the answer matches it."""
        assert batch.images is not None
        images = [img for part in parts for img in part]  # each [1, H, W]
        restored = []
        for image, report in zip(images, batch.images, strict=True):
            pixels = image[0]
            if report.get("inverted"):
                pixels = 1.0 - pixels
            resized = report.get("resized")
            if resized:
                width, height = resized["from"]
                pixels = resize(pixels, height, width)
            restored.append(np.ascontiguousarray(pixels[None], dtype=np.float32))
        if len({r.shape for r in restored}) == 1:
            return [np.stack(restored)]
        return [r[None] for r in restored]

    async def predict(self, entry: ModelEntry, batch: InputBatch) -> TaskResult:
        """Forecast from the last `forecast.window` steps of each series (all of them when shorter)."""
        graph = entry.graph_for("predict")
        card = entry.card
        assert card is not None and card.forecast is not None
        array = self._single(batch)
        window = card.forecast.window
        used = min(array.shape[1], window)
        notes = []
        if array.shape[1] > window:
            notes.append(f"series have {array.shape[1]} steps; the model reads the last {window} (its window)")
            array = np.ascontiguousarray(array[:, -window:])
        elif array.shape[1] < window:
            notes.append(f"series have {array.shape[1]} steps; the model was trained on windows of {window}")
        out = await self._run(graph, array, "predict")
        extra = {"steps_used": used, "notes": notes}
        return TaskResult(entry, "predict", {"forecast": out["forecast"]}, batch, extra)

    async def run(self, entry: ModelEntry, task: str, batch: InputBatch) -> TaskResult:
        handler = {
            "encode": self.encode,
            "decode": self.decode,
            "reconstruct": self.reconstruct,
            "score": self.score,
            "denoise": self.denoise,
            "predict": self.predict,
        }[task]
        return await handler(entry, batch)


def window_starts(steps: int, window: int, stride: int) -> list[int]:
    """Start of every sliding window (the last one ends at the series' end); one window for short series."""
    if steps <= window:
        return [0]
    starts = list(range(0, steps - window + 1, stride))
    if starts[-1] != steps - window:
        starts.append(steps - window)
    return starts
