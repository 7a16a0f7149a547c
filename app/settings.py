"""Every setting of the service, read from the environment with the prefix `AE_` (e.g. `AE_MODELS_DIR`).

Lists are comma-separated (`AE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider`). A `.env` file is not
read: a deployment sets the environment. Tests build a `Settings(...)` directly and hand it to `create_app`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.tasks import TASKS

ENV_PREFIX = "AE_"

GraphOptimization = Literal["disable", "basic", "extended", "layout", "all"]


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


_TaskDefaults: type[BaseSettings] = create_model(  # type: ignore[call-overload]
    "_TaskDefaults",
    __base__=BaseSettings,
    **{
        f"default_{name}_model": (
            str,
            Field(default=task.default_model, description=f"Model behind `POST /v1/{name}`."),
        )
        for name, task in TASKS.items()
    },
)
"""`default_<task>_model` for every task of `app.core.tasks.TASKS` (`AE_DEFAULT_ENCODE_MODEL`, ...)."""


class Settings(_TaskDefaults, BaseSettings):  # type: ignore[misc, valid-type]
    """Service configuration; each field is documented right under it and set by `AE_<FIELD NAME>` (the
    `default_<task>_model` fields come from the task table, with their description)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    models_dir: Path = Path("models")
    """Directory holding one folder per model (`<name>/card.json` plus its ONNX files: version 1; `<name>/<n>/` for
    version n; optional `<name>/versions.json`, see `app/core/versions.py`)."""

    required_models: CommaList | None = None
    """Models that must be loaded for `/readyz` to answer 200. Unset: every card found (strict readiness)."""

    model_control: Literal["none", "poll", "explicit"] = "none"
    """How the models may change while the service runs, as Triton's model-control modes (every mode loads the
    repository at start-up). `none`: never; `POST /v2/repository/index` answers, load, unload and promote are
    refused (403). `poll`: the repository is also watched every `repository_poll_seconds` and what changed in it
    is loaded or unloaded; the API works too. `explicit`: only the API (`/v2/repository/models/{name}/load`,
    `.../unload`, `POST /v1/models/{name}/versions/{v}/load|unload|promote`). The API acts on one worker of one
    replica: with `workers` > 1 it is refused (409); set `api_key` when it is on. See app/README.md."""

    repository_poll_seconds: float = Field(default=15.0, gt=0.0)
    """With `model_control=poll`: seconds between two looks at the models directory (Triton's
    `--repository-poll-secs`). A folder refused once is retried only when its files change (names, sizes,
    modification times)."""

    providers: CommaList | None = None
    """ONNX Runtime execution providers in order of preference. Unset: CUDA when the runtime offers it,
    then CPU. Providers the runtime does not offer are skipped and reported."""

    intra_op_threads: int = Field(default=0, ge=0)
    """Threads ONNX Runtime uses inside one operator. 0: the usable CPUs (affinity and cgroup quota, not the
    host's core count) divided by `workers` x the ONNX calls in flight per worker (`inference_concurrency`), at
    least 1, so that the concurrent ONNX calls of every worker together do not oversubscribe the CPUs."""

    lone_intra_op_threads: int = Field(default=0, ge=0)
    """Intra-op threads of a second ONNX Runtime session each fully convolutional image graph (the denoisers) gets
    on the CPU, for a call that runs alone in its worker process (no other ONNX call in flight) on at least
    `lone_min_values` input values: a lone photograph then uses every core of its worker instead of
    `intra_op_threads` (`python -m bench.lone_request`: a 256x256 digit-denoiser image at c=1 went from 0.50x to
    0.98x bare ONNX Runtime's best single caller). Under load calls overlap and take the ordinary sessions. 0: the
    usable CPUs divided by `workers`; a value not above the resolved `intra_op_threads` means no second session."""

    lone_min_values: int = Field(default=16384, ge=1)
    """Input values from which a lone call takes the `lone_intra_op_threads` session (16 Ki: a 128x128 image);
    smaller calls finish before extra threads would pay for waking up."""

    inter_op_threads: int = Field(default=1, ge=1)
    """Threads ONNX Runtime uses to run independent operators in parallel (sequential mode uses 1)."""

    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime graph optimisation level (ALL speeds the conv models 1.3-2x)."""

    allow_spinning: bool = False
    """Let ORT's intra-op threads busy-wait between operators: lower latency, but it burns CPU that the HTTP
    side of a small box needs."""

    cpu_mem_arena: bool = True
    """ONNX Runtime's CPU memory arena: it grows to the largest batch a session has run and keeps that memory for
    the life of the process (measured: 477 MiB kept after a batch of nine 256x256 images through the denoiser,
    27 MiB with it off), which `batch_max_values` bounds. Off, every call allocates afresh: the benchmark's
    256x256 denoise fell from 0.94x to 0.75x of bare ONNX Runtime and a 1024x1024 image took 2.2 s instead of
    1.4 s, while RSS ended at 636 instead of 1,498 MiB. Turn it off where memory matters more than big-image
    speed."""

    inference_concurrency: int = Field(default=0, ge=0)
    """ONNX Runtime calls in flight at once in one worker process, over every model (each call may be a merged
    batch of many requests). 0: the usable CPUs divided by `workers`, at least 1. Further batches wait in their
    model graph's queue, where later requests join them."""

    inference_thread_nice: int = Field(default=5, ge=0, le=19)
    """Niceness added to the threads that run ONNX Runtime (Linux, per thread; 0: none). When the CPUs are
    saturated the event loop (HTTP parsing, health probes, batching) then runs first, so health stays responsive
    and the batcher keeps being fed; an idle loop leaves every cycle to the computation. Intra-op threads ONNX
    Runtime starts itself (`intra_op_threads` > 1) keep the normal priority."""

    batching: bool = True
    """Dynamic batching: concurrent requests to the same model graph are merged into one ONNX Runtime call and
    the outputs split back to each caller in order. Off: every request is its own call (still queued, bounded and
    under the deadline). A model card's `serving` section may set this and the four knobs below per model; a
    value set in the environment wins over the card."""

    batch_max_rows: int = Field(default=64, ge=1)
    """Most rows (samples) merged into one ONNX Runtime call; a request counts its own rows (a 50-row request
    counts 50). A request with more rows than this runs alone, never refused by the batcher (the request limit
    `max_batch_rows` still applies), and is split into several calls only when its working memory would exceed a
    quarter of `inference_memory_budget_bytes`. Images merge only with images of the same size, series only
    with series of the same length."""

    batch_max_values: int = Field(default=256 * 1024, ge=1)
    """Most input values (numbers, over every input tensor) merged into one ONNX Runtime call: the memory bound
    of a merged batch, and so of what the memory arena keeps, since rows differ in size (a 256x256 image is 83
    times a 28x28 one; the denoiser needs about 750 MiB per million input pixels). 256 Ki values = four 256x256
    images or 334 MNIST rows; merging more big images gains nothing (the denoiser's cost is linear in pixels:
    21-22 images/s at batch 1, 2 or 9). A single request above it still runs alone (see `batch_max_rows`)."""

    batch_max_delay_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    """Longest time, in milliseconds, the oldest waiting request holds its batch open for others to join before
    it is sent (a full batch goes at once). 0 (the default, as Triton's): no holding back; requests still merge
    whenever they arrive while the ONNX Runtime slots are busy or within the same turn of the event loop. Measured
    here: 1 ms cut 1-row requests at concurrency 1 from ~1,200 to ~330 requests/s and gained nothing at 32."""

    queue_max_requests: int = Field(default=128, ge=1)
    """Requests allowed to wait for ONNX Runtime per model graph in one worker process (each worker has its
    own queue). A request arriving at a full queue is refused at once with 503 `overloaded` and `Retry-After`."""

    inference_timeout_seconds: float = Field(default=30.0, gt=0.0)
    """Deadline per request from entering the queue to its result (queue wait plus computation): beyond it the
    request is answered 504 `inference_timeout` and leaves the queue (a batch whose callers have all gone is
    told to stop)."""

    offload_threads: int = Field(default=0, ge=0)
    """Threads per worker process for request work too heavy for the event loop (JSON bodies over 64 KiB, image
    decoding and preprocessing); further such requests wait for one. 0: twice the usable CPUs divided by
    `workers`, at least 2 (Pillow and numpy release the GIL part of the time). anyio's default pool grows to 40
    threads (41 in the process at 32 concurrent 28x28 uploads, against 13), all contending for the GIL, for ~4 %
    more images/s than 4 threads (interleaved runs, within the machine's noise)."""

    workers: int = Field(default=1, ge=0)
    """uvicorn worker processes (`python -m app --workers` overrides). Each loads its own sessions and has its own
    batcher, queue bounds and in-flight cap; with more than one, `/metrics` adds up every worker's values. 1 by
    default (scale with replicas); on a standalone 2-CPU host 2 workers served 1.4-2.1x the small requests of 1
    (and no more compute-bound ones): see app/README.md. 0: one per usable CPU (affinity and cgroup quota),
    resolved when the settings are read."""

    max_body_bytes: int = Field(default=96 * 1024 * 1024, ge=1024)
    """Largest request body accepted on any route, in bytes (413 beyond): 96 MiB admits a noisy 24-megapixel
    colour PNG (~70 MB); what a body may become once parsed is bounded by the memory budgets. Decided from
    `Content-Length` before the body is read, and counted while reading bodies sent without one (chunked). For
    `Content-Encoding: gzip` or `deflate` bodies it is the *decompressed* size that counts (decoded
    incrementally, never past the limit)."""

    body_timeout_seconds: float = Field(default=60.0, ge=0.0)
    """The whole request body must arrive within this many seconds of the request's start (408 beyond): a
    stalled or trickling client cannot hold a slot forever (uvicorn has no read deadline). 0: no deadline."""

    head_timeout_seconds: float = Field(default=10.0, ge=0.0)
    """The request line and headers must arrive within this many seconds of the connection opening (or of the
    first byte of a later request on a kept-alive connection): 408 and the connection closed beyond, so that a
    client stalling inside its head does not keep a connection for ever. Applies under `python -m app`
    (app/server/protocol.py). 0: no deadline."""

    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line plus headers), in bytes: 431 and the connection closed beyond
    (httptools itself has no limit). Applies under `python -m app` (app/server/protocol.py)."""

    body_min_rate_bytes: int = Field(default=4096, ge=0)
    """Slowest accepted average upload rate, in bytes per second, once `body_rate_grace_seconds` have passed: a
    body must be complete `grace + received / rate` seconds after the request's start (and within
    `body_timeout_seconds` in any case), else 408. A client trickling one byte now and then is cut off after the
    grace, not after the whole body timeout. 0: no minimum rate."""

    body_rate_grace_seconds: float = Field(default=5.0, ge=0.0)
    """Seconds a request body may take before `body_min_rate_bytes` applies (slow starts, small bodies)."""

    max_body_reads: int = Field(default=512, ge=1)
    """Request bodies being received at once by one worker process, over every client; one more is refused at
    once with 503 `overloaded` and `Retry-After`. A request holds one of these, not an in-flight slot, until its
    body is complete, so clients still sending never starve requests that are ready to run."""

    max_body_reads_per_client: int = Field(default=32, ge=1)
    """Request bodies one client may be sending at once (429 `too_many_requests` with `Retry-After` beyond). The
    client is the peer address, or the address a trusted proxy (`forwarded_allow_ips`) puts in
    `X-Forwarded-For`."""

    forwarded_allow_ips: CommaList = ["127.0.0.1"]
    """Proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are trusted (uvicorn's `forwarded_allow_ips`):
    addresses or networks, `*` for any. Behind the compose file's nginx, its address; requests from anywhere
    else are counted under their own peer address."""

    max_in_flight_requests: int = Field(default=256, ge=1)
    """Requests handled at once by one worker process once their body has arrived (queued, running, answering),
    over every route; one more is refused at once with 503 `overloaded` and `Retry-After`. `/healthz`, `/readyz`,
    `/metrics` and the V2 health routes are not counted and never refused."""

    request_memory_budget_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    """Memory one worker process lets requests hold at once for their data: bodies being received (their
    declared length), what parsing a JSON body makes of it (estimated from its commas before parsing) and
    decoded images (estimated from their headers before decoding). A request that does not fit waits up to
    `memory_wait_seconds`, then gets 503 `overloaded` with `Retry-After`; one that could never fit gets 413."""

    inference_memory_budget_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    """ONNX Runtime working memory one worker process lets the requests being computed hold at once: each
    request reserves its input values x its graph's working bytes per value (measured when the model loads;
    `GET /v1/models/{name}` shows it) from queueing to its result. Same waiting and refusals as
    `request_memory_budget_bytes`. With the defaults one worker stays under ~2.75 GiB whatever the mix (the
    Kubernetes manifest's limit is 3 GiB): ~0.25 GiB loaded, plus the request, image and inference budgets."""

    memory_wait_seconds: float = Field(default=10.0, ge=0.0)
    """Longest wait for room in a memory budget before a request is answered 503 `overloaded`."""

    retry_after_seconds: int = Field(default=1, ge=0)
    """The `Retry-After` value (seconds) of a 503 `overloaded` answer."""

    max_batch_rows: int = Field(default=4096, ge=1)
    """Most samples (rows, images, latent codes, series) in one request (413 beyond)."""

    max_sequence_length: int = Field(default=10_000, ge=2)
    """Longest series accepted by the sequence models (413 beyond)."""

    max_image_pixels: int = Field(default=24 * 1024 * 1024, ge=16)
    """Largest image (width x height, read from its header before decoding) accepted (413 beyond): 24 Mi
    pixels, a 6000 x 4000 camera photograph with room to spare. What decoding and denoising it holds comes from
    `image_memory_budget_bytes`; the denoisers run large images in tiles (`tile_size`)."""

    image_memory_budget_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    """Memory one worker process lets requests hold at once for decoded images and what is made of them until
    their answer is sent (a colour photograph to a tiled denoiser: ~40 bytes per pixel, e.g. ~480 MiB for
    12 megapixels; an image resized for a digit model: ~64 bytes per pixel while decoding), estimated from the
    image headers before any pixel is decoded. Concurrent large uploads wait up to `memory_wait_seconds` for
    room, then get 503 `overloaded` with `Retry-After`; an upload that could never fit gets 413."""

    max_request_values: int = Field(default=4 * 1024 * 1024, ge=1)
    """Most input values (numbers over every input tensor, after decoding images) one request may send to a
    model graph: 4 Mi float32 values are 16 MiB (e.g. 4096 MNIST rows fit; 256 same-size 1-megapixel uploads do
    not). 413 beyond, before the request is queued."""

    tile_tolerance: float = Field(default=1e-4, ge=0.0, le=1e-2)
    """How far a tiled image may differ from the untiled one (pixels in [0, 1]): tiles overlap by the radius beyond
    which the whole rest of an image moves an output pixel by at most this much, measured when a model loads on
    random images (the worst of several; `GET /v1/models/{name}` shows it). 0: by the exact receptive radius, the
    farthest any pixel has any effect (the photograph denoiser: 29 px against 21 at 1e-4; overlap is repeated work,
    so a 12 MP photograph in 512-px tiles then costs ~1.3x its pixels instead of ~1.2x)."""

    tile_size: int = Field(default=1024, ge=0)
    """Fully convolutional image models (the denoisers) run images larger than this many pixels squared in
    overlapping tiles of at most this side (a multiple of 8; at least twice the overlap the model's tile radius
    needs; as few tiles as fit, each as small as their count allows), through the engine: memory and each call's
    deadline then depend on the tile, not on the image, and the result equals the untiled one within
    `tile_tolerance` (app/core/tiling.py). 0: never tile. Overlap is repeated work: a 12 MP photograph through the
    photo denoiser ran at 0.72x bare ONNX Runtime's pixels/s in 512-px tiles, 0.83x in 1024-px ones (one 1024-px
    RGB tile reserves ~520 MiB of `inference_memory_budget_bytes`), 0.94x in 1536-px ones with a 2 GiB inference
    budget (peak +1.3 GiB) and 0.96x in 2048-px ones with 8 GiB (peak +1.7 GiB): fewer seams for more memory."""

    max_request_pixels: int = Field(default=32 * 1024 * 1024, ge=16)
    """Most image pixels one request may upload, summed over its files (read from their headers before any is
    decoded; 413 beyond): 256 all-black 1024x1024 PNGs are a 300 KB body but a quarter of a gigapixel to decode,
    even for a model that shrinks each to 28x28."""

    max_image_side: int = Field(default=16384, ge=4)
    """Longest image side accepted (413 beyond)."""

    max_upload_files: int = Field(default=256, ge=1)
    """Most files in one multipart upload (413 beyond). Each file's size is bounded by `max_body_bytes`."""

    max_form_fields: int = Field(default=8, ge=0)
    """Most non-file fields in one multipart upload (400 beyond; the inference routes take none: options go in
    the query string, so any field is then a 422 naming it)."""

    max_form_field_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest non-file field of a multipart upload, in bytes (400 beyond)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the service's JSON log lines (one per request at info)."""

    log_json: bool = True
    """One JSON object per log line (off: plain text, for reading in a terminal)."""

    gc_freeze: bool = True
    """Once the models are loaded, move every object alive (modules, schemas, session metadata: all kept for the
    life of the process) out of the garbage collector's view (`gc.freeze()`), so that its full collections under
    load walk only what requests create. Measured at 1-row encode, concurrency 32: p99 latency 50 -> 14 ms."""

    malloc_tunables: str = Field(
        default="glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304",
        pattern=r"^(glibc\.[a-z_.]+=[0-9]+(:glibc\.[a-z_.]+=[0-9]+)*)?$",
    )
    """glibc malloc tunables the server process starts with (`python -m app` runs itself again with them added to
    `GLIBC_TUNABLES`, whose own values win name by name; "" = malloc's defaults; ignored where the C library is not
    glibc). The default: allocations of 4 MiB and more always get their own mapping, given back whole when freed
    (glibc otherwise raises that threshold to 32 MiB after the first such free, and a burst's image-sized buffers
    then stay in its heaps), and malloc asks for transparent huge pages, so the memory ONNX Runtime takes again
    after giving its arena back faults in 2 MiB at a time instead of 4 KiB. Measured on 1024x1024 denoising (`python
    -m bench.lone_request --seconds 20`, `python -m bench.burst_memory`): one request at a time 0.89x -> 1.00x bare
    ONNX Runtime (four at a time 0.87x -> 0.94x), RSS after a burst back to 1.01-1.03x of idle at once in 3 runs
    (was 1.16-1.27x, at the first trim 14 s later), peak ~645 MiB (was ~970); 64-row JSON requests may pay ~6 %."""

    malloc_trim_seconds: float = Field(default=10.0, ge=0)
    """Every this many seconds, hand the memory the process has freed back to the OS (glibc `malloc_trim`, in the
    offload pool; 0 = never): glibc keeps freed memory in its per-thread arenas for reuse. Measured: ~8 MiB lower
    RSS under steady small requests, 10-20 MiB after 256x256 images; see app/runtime/memory.py."""

    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry instrumentation (a span, metrics and error logs per request, sent to the
    providers the process configures, e.g. with `opentelemetry-instrument` or `FASTAPI_OTEL_AUTO_CONFIGURE`).
    Off by default: even with no provider configured, FastAPI looks the providers up on every request (about 6 %
    of the event loop's time at 1-row encode under load); `/metrics` and the JSON access log cover the same
    ground."""

    docs: bool = True
    """Serve `/docs` (Swagger UI) and `/redoc` from local assets."""

    demo: bool = True
    """Serve the demo page at `/` (static HTML/JS/CSS from `app/static/`, no CDN) and its assets under
    `/demo-assets`."""

    bench_endpoints: bool = False
    """Mount the benchmark ceilings `POST /bench/noop-raw` (echo the body unparsed) and `POST /bench/noop-parse`
    (parse it as `/v1` does, then echo it), outside the OpenAPI schema. For `bench/` only; off in production."""

    api_key: SecretStr | None = None
    """When set, every request must carry `Authorization: Bearer <this key>` (401 otherwise), except the paths in
    `api_key_exempt_paths`. Unset: no authentication (put the service behind something that does it)."""

    api_key_exempt_paths: CommaList = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"]
    """Paths served without the API key: exact paths, or prefixes ending in `*` (e.g. `/docs*`). Default: health
    and metrics, so probes and scrapers need no secret."""

    cors_origins: CommaList = []
    """Origins allowed to call the API from a browser (CORS), e.g. `https://app.example.com`; `*` for any.
    Empty (default): no CORS headers are sent, so pages on other origins cannot read the answers."""

    drain_seconds: float = Field(default=0.0, ge=0.0)
    """On SIGTERM, keep serving this many seconds with readiness (`/readyz`, `/v2/health/ready`) answering 503,
    so that a load balancer stops routing here before the listener closes. 0: close the listener at once."""

    graceful_timeout_seconds: float = Field(default=25.0, gt=0.0)
    """Time from SIGTERM to exit: the drain, then in-flight requests finish (anything still running when it is
    up is cancelled). Keep it below the orchestrator's kill deadline (Kubernetes: terminationGracePeriodSeconds,
    30 s by default). `python -m app --timeout-graceful-shutdown` overrides it."""

    # -- gRPC (app/server/grpc_server.py) ------------------------------------------------------------------------
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the gRPC server (Triton's `inference.GRPCInferenceService`, health, reflection), served by every
    worker process in the same event loop as HTTP (`python -m app --grpc-port` overrides). 0: no gRPC."""

    grpc_host: str = "127.0.0.1"
    """Address the gRPC server binds. `python -m app --host H` sets it to H unless it is set in the environment
    (containers: 0.0.0.0)."""

    grpc_max_message_bytes: int = Field(default=96 * 1024 * 1024, ge=1024)
    """Largest gRPC request message, in bytes (RESOURCE_EXHAUSTED beyond, refused by gRPC before the message is
    read): as `max_body_bytes`, 96 MiB. Answers are not limited here (the request limits bound them)."""

    @field_validator("workers")
    @classmethod
    def _auto_workers(cls, value: int) -> int:
        return value or usable_cpus()

    @field_validator(
        "required_models", "providers", "api_key_exempt_paths", "cors_origins", "forwarded_allow_ips", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_list(value)

    @model_validator(mode="after")
    def _drain_within_grace(self) -> Settings:
        if self.drain_seconds >= self.graceful_timeout_seconds:
            raise ValueError(
                f"drain_seconds ({self.drain_seconds:g}) must be shorter than graceful_timeout_seconds "
                f"({self.graceful_timeout_seconds:g}): the drain is part of the grace period"
            )
        return self

    def shutdown_timeout(self) -> float:
        """Seconds uvicorn gives in-flight requests once the listener has closed (the grace period minus the drain)."""
        return self.graceful_timeout_seconds - self.drain_seconds

    def default_model(self, task: str) -> str:
        """The model the short alias route of `task` serves."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        return str(getattr(self, f"default_{task}_model"))

    def ort_concurrency(self) -> int:
        """ONNX Runtime calls in flight per worker process (resolves `inference_concurrency` 0 = automatic)."""
        if self.inference_concurrency:
            return self.inference_concurrency
        return max(1, usable_cpus() // self.workers)

    def ort_lone_threads(self) -> int:
        """Intra-op threads of the lone-call sessions; 0 when there are none (no more threads than the others)."""
        threads = self.lone_intra_op_threads or max(1, usable_cpus() // max(self.workers, 1))
        return threads if threads > self.ort_intra_op_threads() else 0

    def ort_intra_op_threads(self) -> int:
        """The intra-op thread count actually used (resolves 0 = automatic)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, usable_cpus() // (self.workers * self.ort_concurrency()))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment, read once per process."""
    return Settings()
