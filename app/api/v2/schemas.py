"""The Open Inference Protocol's JSON bodies (and Triton's model configuration) as typed models, for OpenAPI.

Inference bodies are parsed and written by `app.api.v2.protocol` straight from/to bytes (binary tensors follow the
JSON); these models document them, and the tests validate real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class V2ErrorResponse(BaseModel):
    """The protocol's error shape, on every `/v2` route (tritonclient and the KServe SDK read `error`)."""

    model_config = _examples(
        {"error": "input 'x' of model 'dense.encoder' has shape [1, 783], expected [-1, 784] (-1: any size)"}
    )
    error: str = Field(description="what went wrong and how to fix it")


# -- health and metadata ------------------------------------------------------------------------------------
class ServerLiveResponse(BaseModel):
    model_config = _examples({"live": True})
    live: bool


class ServerReadyResponse(BaseModel):
    model_config = _examples({"ready": True, "models": {"dense": {"1": "ready", "2": "failed"}}})
    ready: bool
    models: dict[str, dict[str, str]] | None = Field(
        default=None, description="each model's versions and their state (ready, loading, failed)"
    )


class ModelReadyResponse(BaseModel):
    model_config = _examples({"name": "dense.encoder", "ready": True})
    name: str
    ready: bool


class ServerMetadataResponse(BaseModel):
    model_config = _examples({"name": "ae-serve", "version": "0.1.0", "extensions": ["binary_tensor_data"]})
    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions offered")


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="the protocol's datatype, e.g. FP32")
    shape: list[int] = Field(description="-1 for the batch axis and any other dynamic axis")


class ModelMetadataResponse(BaseModel):
    model_config = _examples(
        {
            "name": "dense.encoder",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 784]}],
            "outputs": [{"name": "z", "datatype": "FP32", "shape": [-1, 32]}],
        }
    )
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ConfigTensor(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "x", "data_type": "TYPE_FP32", "dims": [784]}]})
    name: str
    data_type: str = Field(description="Triton's type name, e.g. TYPE_FP32")
    dims: list[int] = Field(description="without the batch axis when max_batch_size > 0; -1 for dynamic axes")
    format: str | None = None


class InstanceGroup(BaseModel):
    count: int = Field(description="ONNX Runtime calls in flight per worker process (AE_INFERENCE_CONCURRENCY)")
    kind: str


class BatchingConfig(BaseModel):
    max_queue_delay_microseconds: int = Field(description="AE_BATCH_MAX_DELAY_MS (or the card's serving section)")
    preferred_batch_size: list[int] = Field(description="rows merged into one call at most (AE_BATCH_MAX_ROWS)")


class ModelConfigResponse(BaseModel):
    """Triton's `GET /v2/models/{name}/config` (the subset perf_analyzer and model_analyzer read)."""

    model_config = _examples(
        {
            "name": "dense.encoder",
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 4096,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [784]}],
            "output": [{"name": "z", "data_type": "TYPE_FP32", "dims": [32]}],
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
            "dynamic_batching": {"max_queue_delay_microseconds": 1000, "preferred_batch_size": [64]},
        }
    )
    name: str
    platform: str
    backend: str
    max_batch_size: int = Field(description="most rows per request (AE_MAX_BATCH_ROWS); 0 if the graph has no batch")
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    instance_group: list[InstanceGroup]
    dynamic_batching: BatchingConfig | None = Field(default=None, description="present when batching is on")


# -- inference ----------------------------------------------------------------------------------------------
_ENCODE_JSON: dict[str, Any] = {
    "id": "req-1",
    "inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}],
    "outputs": [{"name": "z"}],
}


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 (the model's own)")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: the tensor's bytes follow the JSON header instead of `data`"
    )
    data: list[Any] | None = Field(default=None, description="row-major values, flat or nested in `shape`")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(default=None, description="`binary_data`: return it as raw bytes")


class InferenceRequest(BaseModel):
    """A JSON inference request. With the binary tensor data extension the body is this JSON followed by raw
    little-endian tensors, and the `Inference-Header-Content-Length` header gives the JSON's length."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _ENCODE_JSON,
                {
                    "inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [[0.0] * 32]}],
                    "parameters": {"binary_data_output": False},
                },
            ]
        }
    )
    id: str | None = Field(default=None, description="echoed in the response")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output`: every output not listed in `outputs` as raw bytes"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(default=None, description="default: every output of the model")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(default=None, description="`binary_data_size` for binary outputs")
    data: list[Any] | None = Field(default=None, description="flat, row-major (absent for binary outputs)")


class InferenceResponse(BaseModel):
    model_config = _examples(
        {
            "model_name": "dense.encoder",
            "model_version": "1",
            "id": "req-1",
            "outputs": [{"name": "z", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}],
        }
    )
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# -- statistics (Triton's extension) ------------------------------------------------------------------------
class StatDuration(BaseModel):
    count: int
    ns: int = Field(description="total nanoseconds")


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch of the last request (0: none)")
    inference_count: int = Field(description="rows inferred")
    execution_count: int = Field(description="requests executed")
    inference_stats: dict[str, StatDuration] = Field(
        description="success, fail, queue, compute_input, compute_infer (engine call, queue wait included), "
        "compute_output, cache_hit, cache_miss"
    )
    batch_stats: list[dict[str, Any]] = Field(description="per request batch size: compute_input/infer/output")


class ModelStatisticsResponse(BaseModel):
    """Triton's statistics extension: per model, per worker process (perf_analyzer reads it)."""

    model_config = _examples(
        {
            "model_stats": [
                {
                    "name": "dense.encoder",
                    "version": "1",
                    "last_inference": 1796078000000,
                    "inference_count": 64,
                    "execution_count": 1,
                    "inference_stats": {
                        "success": {"count": 1, "ns": 900000},
                        "fail": {"count": 0, "ns": 0},
                        "queue": {"count": 0, "ns": 0},
                        "compute_input": {"count": 1, "ns": 80000},
                        "compute_infer": {"count": 1, "ns": 700000},
                        "compute_output": {"count": 1, "ns": 20000},
                        "cache_hit": {"count": 0, "ns": 0},
                        "cache_miss": {"count": 0, "ns": 0},
                    },
                    "batch_stats": [
                        {
                            "batch_size": 64,
                            "compute_input": {"count": 1, "ns": 80000},
                            "compute_infer": {"count": 1, "ns": 700000},
                            "compute_output": {"count": 1, "ns": 20000},
                        }
                    ],
                }
            ]
        }
    )
    model_stats: list[ModelStatistics]


# -- model repository (Triton's and MLServer's extension) ---------------------------------------------------
class RepositoryIndexRequest(BaseModel):
    """The optional body of `POST /v2/repository/index` (tritonclient sends none)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ready": True}, {}]})
    ready: bool = Field(default=False, description="true: only the versions that serve")


class RepositoryIndexEntry(BaseModel):
    """One version of one model in the repository."""

    model_config = _examples(
        {"name": "dense", "version": "2", "state": "READY", "reason": ""},
        {"name": "dense", "version": "3", "state": "UNAVAILABLE", "reason": "graph full: sha256 of full.onnx is ..."},
    )
    name: str = Field(description="the model name (what load and unload take)")
    version: str
    state: Literal["READY", "UNAVAILABLE", "LOADING"]
    reason: str = Field(
        description="why the version does not serve (empty when it does, unless a newer copy of it was refused)"
    )


class RepositoryIndexResponse(RootModel[list[RepositoryIndexEntry]]):
    """Every version of every model found in the repository or loaded."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [[{"name": "dense", "version": "1", "state": "READY", "reason": ""}]]}
    )


class RepositoryModelRequest(BaseModel):
    """The optional body of load and unload (tritonclient sends `{}` and `{"parameters": {"unload_dependents":
    false}}`). Triton's `config` and `file:` overrides are refused: publish the version folder instead."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"parameters": {"unload_dependents": False}}]})
    parameters: dict[str, Any] | None = Field(
        default=None, description="`unload_dependents` (accepted, nothing depends on a model here)"
    )
