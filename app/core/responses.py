"""The answers of the tasks, as pydantic models: each task's response schema (`app.core.tasks.Task.response`).

Inference answers are serialised straight from numpy by orjson (fast), so these models document them in OpenAPI,
and the tests validate real answers against them. Pydantic only: no web imports.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NESTED = "nested array of numbers, batch first (see `shape`)"


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class ImageInputReport(BaseModel):
    """How one uploaded image was decoded and preprocessed."""

    model_config = ConfigDict(extra="allow")
    filename: str | None = None
    format: str = Field(description="PNG, JPEG, BMP, GIF or WEBP")
    mode: str = Field(description="Pillow mode of the upload (L, RGB, RGBA, P, I;16...)")
    size: list[int] = Field(description="[width, height] after EXIF orientation")
    frames: int = Field(description="frames in the file; the first is used")
    frame_used: int = 0
    exif_transposed: bool
    preprocess: Literal["none", "resize", "mnist"]
    inverted: bool
    model_size: list[int] = Field(description="[width, height] the model saw")
    resized: dict[str, Any] | None = None
    crop_box: list[int] | None = Field(default=None, description="mnist: [left, top, right, bottom] of the digit")
    digit_size: list[int] | None = None
    offset: list[int] | None = None
    background: float | None = None


class TaskResponse(BaseModel):
    """What every task's answer holds; each task's schema adds its outputs (`app.core.tasks.Task.response`)."""

    model: str = Field(description="model name")
    model_version: str
    task: str
    inputs: list[ImageInputReport] | None = Field(
        default=None, description="present for image uploads: what was done to each image"
    )


class EncodeResponse(TaskResponse):
    model_config = _example(
        {"model": "dense", "model_version": "1", "task": "encode", "latent": [[0.0] * 32], "shape": [1, 32]},
    )
    latent: list[Any] = Field(description="latent codes: " + NESTED)
    shape: list[int]


class DecodeResponse(TaskResponse):
    model_config = _example(
        {"model": "dense", "model_version": "1", "task": "decode", "reconstruction": [[0.0] * 784], "shape": [1, 784]},
    )
    reconstruction: list[Any] = Field(description="decoded samples in the model's output shape: " + NESTED)
    shape: list[int]


class ReconstructResponse(TaskResponse):
    model_config = _example(
        {
            "model": "dense",
            "model_version": "1",
            "task": "reconstruct",
            "reconstruction": [[0.0] * 784],
            "shape": [1, 784],
            "scores": [0.0123],
        },
    )
    reconstruction: list[Any] = Field(description=NESTED)
    shape: list[int]
    scores: list[float] = Field(description="per-sample mean squared reconstruction error over the whole sample")


class Window(BaseModel):
    start: int = Field(description="first step of the window")
    end: int = Field(description="one past the last step")
    score: float


class WindowSpec(BaseModel):
    length: int
    stride: int


class ScoreResponse(TaskResponse):
    model_config = _example(
        {
            "model": "lstm-anomaly",
            "model_version": "1",
            "task": "score",
            "scores": [0.84],
            "anomalous": [False],
            "threshold": 1.08,
            "threshold_rule": "99th percentile of the validation normals' window scores",
            "threshold_source": "card",
            "score_description": "mean squared reconstruction error in standardised units per window",
            "window": {"length": 50, "stride": 10},
            "windows": [[{"start": 0, "end": 50, "score": 0.61}, {"start": 10, "end": 60, "score": 0.84}]],
            "worst_window": [{"start": 10, "end": 60, "score": 0.84}],
        },
    )
    scores: list[float] = Field(description="anomaly score per sample (series: the worst window)")
    anomalous: list[bool] = Field(description="score > threshold")
    threshold: float = Field(description="the threshold used: the card's, or the request's threshold / quantile")
    threshold_rule: str = Field(description="where the threshold comes from")
    threshold_source: Literal["card", "request", "quantile"] = Field(
        description="`card`: the card's threshold; `request`: `?threshold=`; `quantile`: `?quantile=`"
    )
    score_description: str
    window: WindowSpec | None = Field(default=None, description="sequence models: the sliding window")
    windows: list[list[Window]] | None = Field(default=None, description="sequence models: every window's score")
    worst_window: list[Window] | None = None


class DenoiseResponse(TaskResponse):
    model_config = _example(
        {
            "model": "denoise",
            "model_version": "1",
            "task": "denoise",
            "denoised": [[[[0.0] * 4] * 4]],
            "shape": [1, 1, 4, 4],
            "shapes": [[1, 4, 4]],
        },
    )
    denoised: list[Any] = Field(description="one [1][H][W] array per image, pixels in [0, 1]")
    shape: list[int] | None = Field(description="[N, 1, H, W] when every image has the same size, else null")
    shapes: list[list[int]] = Field(description="[1, H, W] of each image")


class PredictResponse(TaskResponse):
    model_config = _example(
        {
            "model": "lstm-forecast",
            "model_version": "1",
            "task": "predict",
            "forecast": [[0.1, -0.2, 9.8, 0.01, 0.02, 0.0]],
            "shape": [1, 6],
            "channel_names": ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"],
            "horizon": 1,
            "step_seconds": 0.1,
            "steps_used": 20,
            "notes": [],
        },
    )
    forecast: list[Any] = Field(description="every channel `horizon` steps after the series, raw units")
    shape: list[int]
    channel_names: list[str]
    horizon: int
    step_seconds: float | None
    steps_used: int = Field(description="how many of the last steps the model read")
    notes: list[str]
