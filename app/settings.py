"""Every setting of the service, read from the environment with the prefix `AE_` (e.g. `AE_MODELS_DIR`).

Lists are comma-separated (`AE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider`). A `.env` file is not
read: a deployment sets the environment. Tests build a `Settings(...)` directly and hand it to `create_app`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "AE_"

GraphOptimization = Literal["disable", "basic", "extended", "layout", "all"]
TASK_NAMES = ("encode", "decode", "reconstruct", "score", "denoise", "predict")


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota when one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Service configuration; each field is documented right under it and set by `AE_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    models_dir: Path = Path("models")
    """Directory holding one folder per model (`<name>/card.json` plus its ONNX files)."""

    required_models: CommaList | None = None
    """Models that must be loaded for `/readyz` to answer 200. Unset: every card found (strict readiness)."""

    providers: CommaList | None = None
    """ONNX Runtime execution providers in order of preference. Unset: CUDA when the runtime offers it,
    then CPU. Providers the runtime does not offer are skipped and reported."""

    intra_op_threads: int = Field(default=0, ge=0)
    """Threads ONNX Runtime uses inside one operator. 0: the usable CPUs (affinity and cgroup quota, not the
    host's core count) divided by `workers` x `inference_concurrency`, at least 1, so that concurrent ONNX
    calls of every worker together do not oversubscribe the CPUs."""

    inter_op_threads: int = Field(default=1, ge=1)
    """Threads ONNX Runtime uses to run independent operators in parallel (sequential mode uses 1)."""

    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime graph optimisation level (ALL speeds the conv models 1.3-2x)."""

    allow_spinning: bool = False
    """Let ORT's intra-op threads busy-wait between operators: lower latency, but it burns CPU that the HTTP
    side of a small box needs."""

    inference_concurrency: int = Field(default=2, ge=1)
    """ONNX Runtime calls allowed at once per model; further calls wait for a slot."""

    workers: int = Field(default=1, ge=1)
    """uvicorn worker processes (`python -m app --workers` overrides). Each loads its own sessions."""

    default_encode_model: str = "dense"
    """Model behind `POST /v1/encode`."""
    default_decode_model: str = "dense"
    """Model behind `POST /v1/decode`."""
    default_reconstruct_model: str = "dense"
    """Model behind `POST /v1/reconstruct`."""
    default_score_model: str = "dense"
    """Model behind `POST /v1/score`."""
    default_denoise_model: str = "denoise"
    """Model behind `POST /v1/denoise`."""
    default_predict_model: str = "lstm-forecast"
    """Model behind `POST /v1/predict`."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest request body accepted on inference routes (413 beyond)."""

    max_batch_rows: int = Field(default=4096, ge=1)
    """Most samples (rows, images, latent codes, series) in one request (413 beyond)."""

    max_sequence_length: int = Field(default=10_000, ge=2)
    """Longest series accepted by the sequence models (413 beyond)."""

    max_image_pixels: int = Field(default=4096 * 4096, ge=16)
    """Largest image (width x height, read from its header before decoding) accepted (413 beyond)."""

    max_image_side: int = Field(default=8192, ge=4)
    """Longest image side accepted (413 beyond)."""

    max_upload_files: int = Field(default=256, ge=1)
    """Most files in one multipart upload."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the service's JSON log lines (one per request at info)."""

    log_json: bool = True
    """One JSON object per log line (off: plain text, for reading in a terminal)."""

    docs: bool = True
    """Serve `/docs` (Swagger UI) and `/redoc` from local assets."""

    bench_endpoints: bool = False
    """Mount the benchmark ceilings `POST /bench/noop-raw` (echo the body unparsed) and `POST /bench/noop-parse`
    (parse it as `/v1` does, then echo it), outside the OpenAPI schema. For `bench/` only; off in production."""

    @field_validator("required_models", "providers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_list(value)

    def default_model(self, task: str) -> str:
        """The model the short alias route of `task` serves."""
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task {task!r}")
        return str(getattr(self, f"default_{task}_model"))

    def ort_intra_op_threads(self) -> int:
        """The intra-op thread count actually used (resolves 0 = automatic)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, usable_cpus() // (self.workers * self.inference_concurrency))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment, read once per process."""
    return Settings()
