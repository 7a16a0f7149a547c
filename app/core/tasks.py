"""Every task the service performs, in one table: what each needs from a model, how it runs, what it answers.

A `Task` holds everything about one of `encode`, `decode`, `reconstruct`, `score`, `denoise`, `predict`: the
graph it runs and the outputs it reads from it (the exporter's contract: a card that declares a task without them
fails to load with a reason, `check_card`), its main output (what `.npy` and PNG answers carry), whether it takes
image uploads and answers with images, the model behind its short route (`AE_DEFAULT_<TASK>_MODEL`), its docs
text and request examples, its response schema, how it runs (`run`) and which fields it adds to the JSON answer
(`payload`). The routes of every protocol, the settings, the docs and the tests read this table; adding a task is
one entry here plus its run and payload functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.cards import AnomalySection, CardError, GraphRole, ModelCard, check_input, window_starts
from app.core.errors import InvalidInput
from app.core.images import ImageReport, identical_channels, resize
from app.core.noise import estimate_sigma
from app.core.responses import (
    DecodeResponse,
    DenoiseResponse,
    EncodeResponse,
    PredictResponse,
    ReconstructResponse,
    ScoreResponse,
    TaskResponse,
)

if TYPE_CHECKING:
    from app.core.engine import GraphSession
    from app.core.registry import ModelEntry
    from app.core.service import InferenceService


@dataclass
class InputBatch:
    """A request's samples as float32 arrays in the graph's input shape.

    Usually one array; several when images of different sizes go to a fully convolutional model (each runs
    on its own). `images` holds what decoding and preprocessing did to each uploaded image.
    """

    parts: list[np.ndarray]
    source: str
    images: list[ImageReport] | None = None
    given: dict[str, float] = field(default_factory=dict)
    """Values the caller gave for the task's extra inputs (`Task.extra_inputs`, e.g. `sigma` on 0..255)."""
    options: dict[str, float] = field(default_factory=dict)
    """Values the caller gave for the task's options (`Task.options`, e.g. `score`'s `threshold`)."""

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


Runner = Callable[["InferenceService", "ModelEntry", InputBatch], Awaitable[TaskResult]]
PayloadBuilder = Callable[[TaskResult, dict[str, Any]], None]


@dataclass(frozen=True)
class Task:
    """One task: its graph and outputs, its wire behaviour, its docs, and how it runs."""

    name: str
    graph: GraphRole
    """The graph of the model card the task runs."""
    outputs: tuple[str, ...]
    """Outputs the task reads by name from that graph (a graph's first output needs no name)."""
    main_output: str
    """The answer's key that `.npy` answers and PNG images carry."""
    takes_images: bool
    """Image models accept uploads (multipart, raw `image/*`) and the image query options for this task."""
    gives_images: bool
    """May answer one image as a PNG (`Accept: image/png`) when its main output is image-shaped."""
    default_model: str
    """The model behind `POST /v1/{task}` unless `AE_DEFAULT_<TASK>_MODEL` says otherwise."""
    summary: str
    description: str
    examples: Mapping[str, Any]
    """OpenAPI request examples: a name -> the `inputs` of a JSON body."""
    response: type[TaskResponse]
    run: Runner
    payload: PayloadBuilder
    returns_uploads: bool = False
    """Answers each upload with an image of its own size (undoing any resizing), as a PNG by default."""
    input_kind: str | None = None
    """What the task takes when it is not the model's own input (`decode`: latent codes)."""
    extra_inputs: tuple[str, ...] = ()
    """Inputs the graph may take besides its samples (its first input), by name: `denoise`'s noise level `sigma`
    (a photograph denoiser with a noise-level map)."""
    options: tuple[str, ...] = ()
    """Query options that change how the task reads its outputs, not graph inputs: `score`'s `threshold` and
    `quantile`."""
    card_section: str | None = None
    """A section the card must have for this task, and what it holds."""
    card_section_why: str = ""


# -- how each task runs ----------------------------------------------------------------------------------------
def _single(batch: InputBatch) -> np.ndarray:
    return batch.parts[0] if len(batch.parts) == 1 else np.concatenate(batch.parts)


async def _run_first_output(service: InferenceService, entry: ModelEntry, batch: InputBatch, task: str) -> TaskResult:
    graph = entry.graph_for(task)
    out = await service.run_graph(graph, _single(batch), task)
    return TaskResult(entry, task, {TASKS[task].main_output: out[graph.outputs[0].name]}, batch)


async def _encode(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    return await _run_first_output(service, entry, batch, "encode")


async def _decode(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    return await _run_first_output(service, entry, batch, "decode")


async def _reconstruct(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    out = await service.run_graph(entry.graph_for("reconstruct"), _single(batch), "reconstruct")
    return TaskResult(entry, "reconstruct", {"reconstruction": out["reconstruction"], "scores": out["score"]}, batch)


def choose_threshold(anomaly: AnomalySection, options: Mapping[str, float]) -> dict[str, Any]:
    """The threshold a `score` request uses: the card's, or the caller's `threshold` (in the score's units) or
    `quantile` (of the validation scores the card records); with the rule that says where it came from."""
    threshold, quantile = options.get("threshold"), options.get("quantile")
    if threshold is not None and quantile is not None:
        raise InvalidInput(
            "give threshold or quantile, not both: threshold is a score, quantile picks one from the validation scores",
            {"field": "quantile"},
        )
    if threshold is not None:
        return {"threshold": float(threshold), "threshold_rule": "given by the request", "threshold_source": "request"}
    if quantile is not None:
        value = anomaly.threshold_at(quantile)
        if value is None:
            raise InvalidInput(
                f"quantile {quantile:g} is not one this model's card records; it offers {anomaly.quantiles_offered()}",
                {"field": "quantile", "offered": anomaly.quantiles_offered()},
            )
        return {
            "threshold": value,
            "threshold_rule": f"{quantile:g} quantile of the validation scores (requested; the card's rule: "
            f"{anomaly.threshold_rule or anomaly.threshold})",
            "threshold_source": "quantile",
        }
    return {"threshold": float(anomaly.threshold), "threshold_rule": anomaly.threshold_rule, "threshold_source": "card"}


async def _score(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    """Per-sample anomaly scores; series longer than the card's window are scored in sliding windows."""
    graph = entry.graph_for("score")
    card = entry.card
    assert card is not None and card.anomaly is not None
    extra: dict[str, Any] = choose_threshold(card.anomaly, batch.options)
    threshold = extra["threshold"]
    # Stated in headers too, for answers whose body is only the scores (.npy).
    extra["headers"] = {"X-Threshold": f"{threshold:.9g}", "X-Threshold-Source": extra["threshold_source"]}
    array = _single(batch)
    sequence = card.input.sequence
    if card.input.layout == "sequence" and sequence is not None:
        steps = array.shape[1]
        starts = window_starts(steps, sequence.window, sequence.stride)
        length = min(steps, sequence.window)
        windows = np.stack([array[:, s : s + length] for s in starts], axis=1)  # [N, W, length, C]
        flat = np.ascontiguousarray(windows.reshape(-1, length, array.shape[2]))
        per_window = (await service.run_graph(graph, flat, "score"))["score"].reshape(len(array), len(starts))
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
        scores = (await service.run_graph(graph, array, "score"))["score"]
    return TaskResult(entry, "score", {"scores": scores, "anomalous": scores > threshold}, batch, extra)


async def _denoise(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    """Denoise each image: large ones in tiles (`app.core.tiling`), and, for a graph that takes the noise level,
    with the caller's `sigma` (0..255) or the one `app.core.noise` estimates on each image. A colour model with a
    `gray` graph (photo's gray specialist) runs gray images, a gray upload or 3 identical channels, through it."""
    graph = entry.graph_for("denoise")
    gray_graph = entry.graphs.get("gray")
    takes_sigma = any(spec.name == "sigma" for spec in graph.inputs[1:])
    given = batch.given.get("sigma")
    parts, sigmas, index = [], [], 0
    for part in batch.parts:
        levels = np.zeros(len(part), dtype=np.float32)
        if takes_sigma:
            for i, image in enumerate(part):
                levels[i] = given / 255.0 if given is not None else await service.compute(estimate_sigma, image, 0)
            sigmas.extend(float(v) * 255.0 for v in levels)
        gray = _gray_images(batch, index, part) if gray_graph is not None else np.zeros(len(part), dtype=bool)
        index += len(part)
        if not gray.any():
            parts.append(await _denoise_part(service, graph, part, levels, takes_sigma))
            continue
        assert gray_graph is not None
        # The gray graph's answers as 3 identical channels (a view): a gray upload's answer is their mean (exact),
        # an array's keeps the shape it came in.
        ones_in = part[:, :1] if gray.all() else part[gray, :1]
        ones = await _denoise_part(service, gray_graph, ones_in, levels[gray], takes_sigma)
        if gray.all():
            parts.append(np.broadcast_to(ones, part.shape))
            continue
        out = np.empty(part.shape, dtype=np.float32)
        out[gray] = ones
        out[~gray] = await _denoise_part(service, graph, part[~gray], levels[~gray], takes_sigma)
        parts.append(out)
    if batch.images is not None:
        parts = _back_to_uploads(parts, batch)
    extra_fields: dict[str, Any] = {}
    if takes_sigma:
        source = "given" if given is not None else "estimated"
        extra_fields = {"sigma": [round(s, 3) for s in sigmas], "sigma_source": source}
        extra_fields["headers"] = {"X-Sigma": ",".join(f"{s:.2f}" for s in sigmas), "X-Sigma-Source": source}
    return TaskResult(entry, "denoise", {"denoised": parts}, batch, extra_fields)


def _gray_images(batch: InputBatch, start: int, part: np.ndarray) -> np.ndarray:
    """Which images of `part` (the batch's images from `start` on) are gray: an upload as its decoder saw it, an
    array sample of 3 channels when they are identical."""
    if batch.images is not None:
        return np.array([not report.colour for report in batch.images[start : start + len(part)]], dtype=bool)
    if part.ndim != 4 or part.shape[1] != 3:
        return np.zeros(len(part), dtype=bool)
    return np.array([identical_channels(x) for x in part], dtype=bool)


async def _denoise_part(
    service: InferenceService, graph: GraphSession, part: np.ndarray, levels: np.ndarray, takes_sigma: bool
) -> np.ndarray:
    """`graph`'s denoised images [N, C, H, W] for `part` (same shape), in tiles when they are large."""
    if service.tiles(graph, part.shape[2], part.shape[3]):
        outs = [
            await service.run_tiled(graph, image, "denoise", "denoised", _sigma_feed(takes_sigma, float(level)))
            for image, level in zip(part, levels, strict=True)
        ]
        return outs[0][None] if len(outs) == 1 else np.stack(outs)
    feeds = {"sigma": levels} if takes_sigma else {}
    array = np.ascontiguousarray(part)  # a photograph's sample may be a view (app/api/inputs.py)
    return (await service.run_graph(graph, array, "denoise", feeds))["denoised"]


def _sigma_feed(takes_sigma: bool, level: float) -> Callable[[int], dict[str, np.ndarray]]:
    """The `sigma` input of a batch of n tiles of one image (nothing for a graph without it)."""

    def feed(count: int) -> dict[str, np.ndarray]:
        return {"sigma": np.full(count, level, dtype=np.float32)} if takes_sigma else {}

    return feed


def _back_to_uploads(parts: list[np.ndarray], batch: InputBatch) -> list[np.ndarray]:
    """Undo what preprocessing did to each upload (inversion, resizing) so the answer matches it."""
    assert batch.images is not None
    images = [img for part in parts for img in part]  # each [1, H, W]
    restored = []
    for image, report in zip(images, batch.images, strict=True):
        if image.shape[0] == 3:  # a colour model: colour answers colour, a gray upload gets gray back
            planes = image if report.colour else image.mean(axis=0, keepdims=True)
            if report.resized_from is not None:
                width, height = report.resized_from
                planes = np.stack([resize(np.ascontiguousarray(p, dtype=np.float32), height, width) for p in planes])
            restored.append(np.ascontiguousarray(planes))
            continue
        pixels = image[0]
        if report.inverted:
            pixels = 1.0 - pixels
        if report.resized_from is not None:
            width, height = report.resized_from
            pixels = resize(pixels, height, width)
        restored.append(np.ascontiguousarray(pixels[None], dtype=np.float32))
    if len(restored) == 1:
        return [restored[0][None]]
    if len({r.shape for r in restored}) == 1:
        return [np.stack(restored)]
    return [r[None] for r in restored]


async def _predict(service: InferenceService, entry: ModelEntry, batch: InputBatch) -> TaskResult:
    """Forecast from the last `forecast.window` steps of each series (all of them when shorter)."""
    graph = entry.graph_for("predict")
    card = entry.card
    assert card is not None and card.forecast is not None
    array = _single(batch)
    window = card.forecast.window
    used = min(array.shape[1], window)
    notes = []
    if array.shape[1] > window:
        notes.append(f"series have {array.shape[1]} steps; the model reads the last {window} (its window)")
        array = np.ascontiguousarray(array[:, -window:])
    elif array.shape[1] < window:
        notes.append(f"series have {array.shape[1]} steps; the model was trained on windows of {window}")
    out = await service.run_graph(graph, array, "predict")
    return TaskResult(entry, "predict", {"forecast": out["forecast"]}, batch, {"steps_used": used, "notes": notes})


# -- what each task adds to its JSON answer ---------------------------------------------------------------------
def _main_with_shape(result: TaskResult, payload: dict[str, Any]) -> None:
    key = TASKS[result.task].main_output
    payload[key] = result.outputs[key]
    payload["shape"] = list(result.outputs[key].shape)


def _reconstruct_payload(result: TaskResult, payload: dict[str, Any]) -> None:
    _main_with_shape(result, payload)
    payload["scores"] = result.outputs["scores"]


def _score_payload(result: TaskResult, payload: dict[str, Any]) -> None:
    anomaly = result.card.anomaly
    assert anomaly is not None
    payload["scores"] = result.outputs["scores"]
    payload["anomalous"] = result.outputs["anomalous"]
    for key in ("threshold", "threshold_rule", "threshold_source"):
        payload[key] = result.extra[key]
    payload["score_description"] = anomaly.score
    for key in ("window", "windows", "worst_window"):
        payload[key] = result.extra.get(key)


def _denoise_payload(result: TaskResult, payload: dict[str, Any]) -> None:
    if "sigma" in result.extra:
        payload["sigma"] = result.extra["sigma"]
        payload["sigma_source"] = result.extra["sigma_source"]
    parts = result.outputs["denoised"]
    shapes = [list(img.shape) for part in parts for img in part]
    payload["denoised"] = [img for part in parts for img in part] if len(parts) > 1 else parts[0]
    payload["shape"] = [result.batch.rows, *shapes[0]] if len(parts) == 1 else None
    payload["shapes"] = shapes


def _predict_payload(result: TaskResult, payload: dict[str, Any]) -> None:
    _main_with_shape(result, payload)
    card = result.card
    sequence = card.input.sequence
    assert card.forecast is not None
    payload["channel_names"] = sequence.channel_names if sequence else []
    payload["horizon"] = card.forecast.horizon
    payload["step_seconds"] = card.forecast.step_seconds
    payload["steps_used"] = result.extra["steps_used"]
    payload["notes"] = result.extra["notes"]


# -- the table ---------------------------------------------------------------------------------------------------
_DIGIT = [[0.0] * 784]
_SERIES = [[[0.12, -0.05, 9.81, 0.01, 0.0, -0.02]] * 25]

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="encode",
            graph="encoder",
            outputs=(),
            main_output="latent",
            takes_images=True,
            gives_images=False,
            default_model="dense",
            summary="Encode samples to latent codes",
            description="Vectors, images or series -> latent codes (the encoder graph).",
            examples={"dense (vector)": _DIGIT, "conv (image)": [[[0.0] * 28] * 28], "lstm (series)": _SERIES},
            response=EncodeResponse,
            run=_encode,
            payload=_main_with_shape,
        ),
        Task(
            name="decode",
            graph="decoder",
            outputs=(),
            main_output="reconstruction",
            takes_images=False,
            gives_images=True,
            default_model="dense",
            summary="Decode latent codes to samples",
            description="Latent codes (as `encode` returns them) -> samples in the model's output shape (the "
            "decoder graph). Image models answer with a PNG for `Accept: image/png` and one code.",
            examples={"dense (latent)": [[0.0] * 32], "lstm (per-step latent)": [[[0.1, -0.3, 0.2]] * 25]},
            response=DecodeResponse,
            run=_decode,
            payload=_main_with_shape,
            input_kind="latent codes",
        ),
        Task(
            name="reconstruct",
            graph="full",
            outputs=("reconstruction", "score"),
            main_output="reconstruction",
            takes_images=True,
            gives_images=True,
            default_model="dense",
            summary="Reconstruct samples, with the per-sample error",
            description="Inputs -> reconstructions plus each sample's mean squared reconstruction error (the full "
            "graph). `Accept: image/png` with one image gives the reconstruction as a PNG, its error in `X-Score`.",
            examples={"dense (vector)": _DIGIT, "lstm (series)": _SERIES},
            response=ReconstructResponse,
            run=_reconstruct,
            payload=_reconstruct_payload,
        ),
        Task(
            name="score",
            graph="full",
            outputs=("score",),
            main_output="scores",
            takes_images=True,
            gives_images=False,
            default_model="dense",
            summary="Anomaly scores and flags",
            description="Inputs -> anomaly score (mean squared reconstruction error) and `anomalous = score > "
            "threshold`: the card's threshold, or the request's `threshold` (a score) or `quantile` (of the "
            "validation scores the card records); the answer states the threshold used and its rule. Series "
            "longer than the model's window are scored in sliding windows (window and stride from the card, the "
            "last window ends at the series' end): every window's score is returned and the series' score is its "
            "worst window.",
            examples={"dense (vector)": _DIGIT, "lstm-anomaly (series)": _SERIES},
            response=ScoreResponse,
            run=_score,
            payload=_score_payload,
            options=("threshold", "quantile"),
            card_section="anomaly",
            card_section_why="threshold",
        ),
        Task(
            name="denoise",
            graph="full",
            outputs=("denoised",),
            main_output="denoised",
            takes_images=True,
            gives_images=True,
            default_model="photo",
            summary="Denoise images",
            description="An image -> the denoised image, the same size as the upload. Fully convolutional models "
            "run at the native size (large images in tiles); others are resized in and out (stated in the "
            "`X-Resize` header). An image upload is answered in its own format (PNG, JPEG, WebP; PNG for the "
            "others) unless `Accept` asks for another, JSON or .npy. The short route's default is `photo`, the "
            "photograph denoiser (gray or colour, any size; `AE_DEFAULT_DENOISE_MODEL=denoise` for the digit "
            "denoiser).",
            examples={"denoise (one 8x8 image)": [[[[0.0] * 8] * 8]]},
            response=DenoiseResponse,
            run=_denoise,
            payload=_denoise_payload,
            returns_uploads=True,
            extra_inputs=("sigma",),
        ),
        Task(
            name="predict",
            graph="full",
            outputs=("forecast",),
            main_output="forecast",
            takes_images=False,
            gives_images=False,
            default_model="lstm-forecast",
            summary="Forecast the next step of a series",
            description="Series [N][time][channels] in raw sensor units -> every channel one horizon ahead. The "
            "model reads the last `forecast.window` steps of longer series.",
            examples={"lstm-forecast (20 steps)": [[[0.12, -0.05, 9.81, 0.01, 0.0, -0.02]] * 20]},
            response=PredictResponse,
            run=_predict,
            payload=_predict_payload,
            card_section="forecast",
            card_section_why="window, horizon",
        ),
    )
}


async def run_task(service: InferenceService, entry: ModelEntry, task: str, batch: InputBatch) -> TaskResult:
    """Run `task` on the model of `entry` with the inputs of `batch`."""
    return await TASKS[task].run(service, entry, batch)


def check_card(card: ModelCard) -> None:
    """Cross-field checks: every declared task has its graph, outputs and card section; the input section fits."""
    for name in card.tasks:
        task = TASKS.get(name)
        if task is None:
            raise CardError(f"task {name!r} is not one this service knows ({', '.join(TASKS)})")
        graph = card.graphs.get(task.graph)
        if graph is None:
            raise CardError(f"task {name!r} needs the {task.graph!r} graph, which the card does not list")
        if not graph.inputs:
            raise CardError(f"task {name!r}: the {task.graph!r} graph takes no input")
        unknown = [spec.name for spec in graph.inputs[1:] if spec.name not in task.extra_inputs]
        if unknown:
            fed = ", ".join(["its samples", *task.extra_inputs])
            raise CardError(f"task {name!r}: the {task.graph!r} graph also takes {unknown}; the task feeds {fed}")
        for output in task.outputs:
            if graph.output(output) is None:
                raise CardError(f"task {name!r} needs output {output!r} of the {task.graph!r} graph")
        if task.card_section is not None and getattr(card, task.card_section) is None:
            raise CardError(f"task {name!r} needs the card's {task.card_section} section ({task.card_section_why})")
    check_input(card)
