"""The model registry: finds the cards, verifies the ONNX files, owns the ONNX Runtime sessions.

Loading (at start-up, from the app's lifespan) goes model by model and version by version (the layout and the
version policy are `app.core.versions`); a version that fails for any reason (bad card, a card whose version is
not its folder's, missing file, size or sha256 mismatch, corrupt ONNX, tensors that differ from the card, a
failed warm-up, a malformed `versions.json`) is recorded as failed with the reason, and the others still serve.
Entries are kept per (name, version); each model has a default version (what a request that names none gets),
swapped by one assignment. Requests look models up by name and version in the registry's own table only: no
filesystem path is ever built from a request.

At run time (`app.core.control`: the model-control API and the repository poll) versions are loaded into fresh
entries off the event loop, then swapped in by `install` and taken out by `remove`, each one synchronous step
on the event loop (a request sees the model before or after, never half of it). A model is replaced as a new
`ModelRecord` object, never edited in place; the entries taken out are handed back for the caller to drain
(requests in flight on them finish) and free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.core.cards import (
    CARD_FILE,
    ORT_TYPES,
    CardError,
    GraphCard,
    ModelCard,
    TensorSpec,
    display_name,
    name_is_valid,
    read_card,
    read_regular_file,
)
from app.core.engine import DEFAULT_WORK_BYTES_PER_VALUE, GraphSession, InferenceEngine, shares_batch_axis
from app.core.errors import ModelNotFound, ModelUnavailable, TaskNotSupported
from app.core.providers import ProviderPlan, ProviderReport, plan_providers, report_providers
from app.core.tasks import TASKS, check_card
from app.core.versions import (
    FLAT_VERSION,
    Fingerprint,
    PolicyError,
    VersionPolicy,
    read_policy,
    snapshot,
    version_folders,
    version_number,
)
from app.runtime.memory import measure_growth
from app.runtime.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("app.registry")

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelStatus(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class LoadError(Exception):
    """Why a model could not be served."""


@dataclass
class ModelEntry:
    """One version of a model (its folder): its card, its sessions, and whether it serves."""

    name: str
    folder: Path
    version: int = FLAT_VERSION
    status: ModelStatus = ModelStatus.LOADING
    reason: str | None = None
    card: ModelCard | None = None
    graphs: dict[str, GraphSession] = field(default_factory=dict)
    providers: ProviderReport | None = None
    load_seconds: float | None = None
    refused: str | None = None
    """Why a newer copy of this version was refused while this one kept serving (a reload that failed)."""
    in_flight: int = 0
    """Requests using this entry now (the inference handlers count them): an unloaded version's sessions are
    freed once it is back to 0."""

    @property
    def ready(self) -> bool:
        return self.status is ModelStatus.READY

    @property
    def note(self) -> str | None:
        """Why the version does not serve, or why a newer copy of it was refused while it serves."""
        return self.reason or self.refused

    def graph_for(self, task: str) -> GraphSession:
        """The session serving `task`; raises TaskNotSupported when the model does not offer it."""
        assert self.card is not None
        if task not in self.card.tasks:
            raise TaskNotSupported(
                f"model {self.name!r} does not support {task!r}; its tasks are {self.card.tasks}",
                {"model": self.name, "task": task, "tasks": self.card.tasks},
            )
        return self.graphs[TASKS[task].graph]


@dataclass
class ModelRecord:
    """A model: its versions (the policy's selection, each with its state), the policy, and the default version.

    `default` is the version a request that names none gets: the promoted version (`pinned`) when it serves, else
    `versions.json`'s `default` when it serves, else the highest version that serves, else None. It is one
    attribute, so a swap (promote, a version loaded or unloaded) is atomic for every request."""

    name: str
    folder: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    versions: dict[int, ModelEntry] = field(default_factory=dict)
    on_disk: list[int] = field(default_factory=list)
    default: int | None = None
    pinned: int | None = None
    """The version promoted at run time (in memory only: a restart reads `versions.json` again)."""
    required: bool = True
    """Readiness requires the model (every model found at start-up; one loaded at run time once it serves)."""
    problem: str | None = None
    """Why the last change of the model's folder (a malformed `versions.json`) was refused, if it was."""
    snapshot: dict[str, Fingerprint] = field(default_factory=dict)
    """What the model's folder held when it was read (app/core/versions.py `snapshot`), for the poll."""

    def note(self, entry: ModelEntry) -> str | None:
        """Why a version does not serve, or what was refused while it serves: a newer copy of it, or the folder's
        `versions.json`."""
        if entry.note is None and entry.ready and self.problem is not None:
            return f"the model's versions.json was refused (it serves as before): {self.problem}"
        return entry.note

    def choose_default(self) -> None:
        """Point `default` at the promoted version if it serves, else at the requested default if it serves, else
        at the highest version that serves."""
        ready = [number for number, entry in self.versions.items() if entry.ready]
        for wanted in (self.pinned, self.policy.default):
            if wanted is not None and wanted in ready:
                self.default = wanted
                return
        self.default = max(ready) if ready else None

    @property
    def representative(self) -> ModelEntry:
        """The entry that speaks for the model: its default version, else its highest version (failed or
        loading), whose status and reason say why nothing serves."""
        if self.default is not None:
            return self.versions[self.default]
        return self.versions[max(self.versions)]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    required: list[str]
    not_ready: dict[str, str]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def external_data_locations(data: bytes) -> list[str]:
    """The external-data files an ONNX model's tensors point to (initialisers, constants, subgraphs), if any."""
    import onnx  # only at load time: the service's import stays light

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return []  # not a protobuf: ONNX Runtime reports it
    locations: list[str] = []

    def tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
        found = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                found.extend([attr.t] if attr.HasField("t") else [])
                found.extend(attr.tensors)
                for sub in [attr.g] if attr.HasField("g") else []:
                    found.extend(tensors(sub))
                for sub in attr.graphs:
                    found.extend(tensors(sub))
        return found

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {item.key: item.value for item in tensor.external_data}
            location = entry.get("location", "?")
            if location not in locations:
                locations.append(location)
    return locations


def takes_images(graph: GraphCard) -> bool:
    """Whether a graph's first input is a batch of images ([N, C, H, W]): the graphs whose calls are large enough
    for more intra-op threads to pay (`Settings.lone_intra_op_threads`)."""
    return bool(graph.inputs) and len(graph.inputs[0].shape) == 4


def session_options(settings: Settings, intra_op_threads: int = 0) -> ort.SessionOptions:
    """Session options from the settings: thread counts (`intra_op_threads` when given: the lone-call sessions),
    optimisation level, memory arena, busy-waiting."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or settings.ort_intra_op_threads()
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPTIMIZATION_LEVELS[settings.graph_optimization]
    opts.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not our JSON log
    opts.enable_cpu_mem_arena = settings.cpu_mem_arena
    spin = "1" if settings.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def _compare_tensors(kind: str, declared: list[TensorSpec], actual: list[ort.NodeArg]) -> None:
    """The session's inputs or outputs are exactly the card's: names, order, dtype, rank, fixed sizes."""
    names = [a.name for a in actual]
    if names != [t.name for t in declared]:
        raise LoadError(f"{kind} names in the ONNX file {names} differ from the card's {[t.name for t in declared]}")
    for spec, arg in zip(declared, actual, strict=True):
        if arg.type != ORT_TYPES[spec.dtype]:
            raise LoadError(f"{kind} {spec.name} is {arg.type} in the ONNX file, the card says {spec.dtype}")
        if len(arg.shape) != len(spec.shape):
            raise LoadError(f"{kind} {spec.name} has shape {arg.shape} in the ONNX file, the card says {spec.shape}")
        for axis, (want, got) in enumerate(zip(spec.shape, arg.shape, strict=True)):
            if isinstance(want, str) and isinstance(got, int):
                raise LoadError(
                    f"{kind} {spec.name} axis {axis} is fixed to {got} in the ONNX file but the card says "
                    f"dynamic ({want})"
                )
            if isinstance(want, int) and isinstance(got, int) and want != got:
                raise LoadError(f"{kind} {spec.name} axis {axis} is {got} in the ONNX file, the card says {want}")


def warmup_feeds(card: ModelCard, graph: GraphCard) -> dict[str, np.ndarray]:
    """A one-sample input for each graph input, its named axes sized from the card, values inside the range."""
    image = card.input.image
    sequence = card.input.sequence
    sizes: dict[str, int] = {"batch": 1}
    if image is not None:
        side = max(image.min_side or 4, 28)
        sizes["height"] = image.height or side
        sizes["width"] = image.width or side
    if sequence is not None:
        sizes["time"] = max(sequence.window, sequence.min_length)
    feeds = {}
    for spec in graph.inputs:
        shape = [dim if isinstance(dim, int) else sizes.get(dim, 8) for dim in spec.shape]
        value = min(max(0.0, spec.low), spec.high) if math.isfinite(spec.low) or math.isfinite(spec.high) else 0.0
        feeds[spec.name] = np.full(shape, value, dtype=spec.numpy_dtype)
    return feeds


PROBE_VALUES = 32 * 1024
"""Input values of the probe that measures a graph's working memory at load (its warm-up sample, repeated)."""
MIN_WORK_BYTES_PER_VALUE = 64.0
WORK_SAFETY = 1.5
"""Margin on the measured working memory: thread counts, allocator and batch shapes differ between calls."""


def measure_working_memory(engine: InferenceEngine, graph: GraphSession, feeds: dict[str, np.ndarray]) -> float:
    """ONNX Runtime's working memory per input value for `graph`: the peak RSS growth of one call on ~32 Ki
    input values (the warm-up sample repeated along the batch axis; the arena gives the memory back after it),
    with a margin. Per value because the models' cost is linear in rows and in pixels; what the inference memory
    budget charges each request. Falls back to `DEFAULT_WORK_BYTES_PER_VALUE` where it cannot be measured."""
    values = sum(int(a.size) for a in feeds.values())
    if shares_batch_axis(graph.card) and values:
        repeat = max(1, PROBE_VALUES // values)
        feeds = {name: np.repeat(a, repeat, axis=0) for name, a in feeds.items()}
        values *= repeat
    growth = measure_growth(lambda: engine.run_blocking(graph, feeds, "warmup", shrink_arena=True))
    if growth is None or not values:
        return DEFAULT_WORK_BYTES_PER_VALUE
    return round(max(MIN_WORK_BYTES_PER_VALUE, growth / values * WORK_SAFETY), 1)


RADIUS_PROBE_SIDES = (64, 160)
"""Image sides the receptive radius is measured on, the next one tried when the effect reaches the border."""


def _middle(spec: TensorSpec) -> float:
    low = spec.low if math.isfinite(spec.low) else 0.0
    high = spec.high if math.isfinite(spec.high) else low + 1.0
    return (low + high) / 2


def measure_receptive_radius(engine: InferenceEngine, graph: GraphSession) -> int | None:
    """How far one input pixel's change reaches in the output of a fully convolutional image graph: the graph is
    run on a random image and on the same image with its centre pixel changed; the radius is the farthest output
    pixel that moved (Chebyshev distance). None when the effect reaches the probe's border (not measurable)."""
    first = graph.inputs[0]
    if len(first.shape) != 4 or not all(isinstance(d, str) for d in first.shape[2:]):
        return None
    channels = first.shape[1]
    if not isinstance(channels, int):
        return None
    rng = np.random.default_rng(0)
    # The other inputs (a noise level) mid-range: at their warm-up value (the bottom of the range, sigma = 0) a
    # denoiser may ignore its neighbourhood altogether.
    extra = {
        spec.name: np.full([1 if isinstance(d, str) else d for d in spec.shape], _middle(spec), spec.numpy_dtype)
        for spec in graph.inputs[1:]
    }
    for side in RADIUS_PROBE_SIDES:
        low, high = max(first.low, 0.0), min(first.high, 1.0)
        base = (low + (high - low) * rng.random((1, channels, side, side))).astype(first.numpy_dtype)
        moved = base.copy()
        centre = side // 2
        moved[:, :, centre, centre] = np.where(base[:, :, centre, centre] > (low + high) / 2, low, high)
        name = graph.outputs[0].name
        before = engine.run_blocking(graph, {first.name: base, **extra}, "warmup")[name]
        after = engine.run_blocking(graph, {first.name: moved, **extra}, "warmup")[name]
        changed = np.argwhere(np.abs(after - before).max(axis=(0, 1)) > 1e-7)
        if not len(changed):
            return 0
        radius = int(np.abs(changed - centre).max())
        if radius < centre - 1:
            return radius
    return None


TILE_PROBE_TRIALS = 3
"""Random images the tile radius is measured on (the worst counts), each with two kinds of surroundings."""
TILE_PROBE_BLOCK = 8
"""The probe's centre block: output pixels on every position of the networks' 8-px grid are measured."""


def measure_tile_radius(engine: InferenceEngine, graph: GraphSession, exact: int, tolerance: float) -> int:
    """The smallest radius r such that replacing everything farther than r from a block of output pixels (by
    other random values, or by zeros as a tile's padding has) moves those pixels by at most `tolerance`: what
    tiles must overlap by for the tiled image to equal the untiled one within about `tolerance`. At most `exact`
    (the receptive radius, beyond which nothing has any effect); `tolerance` 0 gives `exact`.

    Measured on random images, which excite a network's far weights more than photographs do (the photograph
    denoiser: r = 21 of 29 for 1e-4; a real photograph tiled with r = 16 already differs from the untiled one by
    less than 6e-5)."""
    first = graph.inputs[0]
    channels = first.shape[1]
    if tolerance <= 0 or exact <= 0 or not isinstance(channels, int):
        return exact
    block = TILE_PROBE_BLOCK
    side = 2 * (exact + 8) + block
    side += -side % block
    lo = (side - block) // 2  # the block's first row / column
    low, high = max(first.low, 0.0), min(first.high, 1.0)
    extra = {
        spec.name: np.full([1 if isinstance(d, str) else d for d in spec.shape], _middle(spec), spec.numpy_dtype)
        for spec in graph.inputs[1:]
    }
    name = graph.outputs[0].name
    rng = np.random.default_rng(1)
    probes = []
    for _ in range(TILE_PROBE_TRIALS):
        base = (low + (high - low) * rng.random((1, channels, side, side))).astype(first.numpy_dtype)
        other = (low + (high - low) * rng.random(base.shape)).astype(first.numpy_dtype)
        want = engine.run_blocking(graph, {first.name: base, **extra}, "warmup")[name][
            ..., lo : lo + block, lo : lo + block
        ]
        probes += [(base, other, want), (base, np.full_like(base, low), want)]
    index = np.arange(side)
    distance = np.maximum(  # Chebyshev distance of each pixel from the block
        np.maximum(lo - index, index - (lo + block - 1)).clip(0)[:, None],
        np.maximum(lo - index, index - (lo + block - 1)).clip(0)[None, :],
    )

    def moved(radius: int) -> float:
        outside = distance > radius
        worst = 0.0
        for base, other, want in probes:
            probe = np.where(outside, other, base).astype(first.numpy_dtype)
            got = engine.run_blocking(graph, {first.name: probe, **extra}, "warmup")[name]
            worst = max(worst, float(np.abs(got[..., lo : lo + block, lo : lo + block] - want).max()))
        return worst

    low_r, high_r = 0, exact  # moved(exact) is 0: nothing beyond the receptive radius reaches the block
    while low_r < high_r:
        middle = (low_r + high_r) // 2
        if moved(middle) <= tolerance:
            high_r = middle
        else:
            low_r = middle + 1
    return high_r


class ModelRegistry:
    """Every model found in the models directory, by name."""

    def __init__(self, settings: Settings, engine: InferenceEngine, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._entries: dict[str, ModelRecord] = {}
        self._scan_problem: str | None = None
        self._released: set[str] = set()
        """Models taken out at run time (unloaded, or their folder removed): no longer required for readiness."""
        self._generations = itertools.count(1)
        self._measured: dict[str, tuple[float, int | None, int | None]] = {}
        """Working memory per value, receptive radius and tile radius, by graph sha256: measured once per graph (a
        reload of the same file under load would otherwise measure the requests' memory too)."""
        self._runtime: tuple[ProviderPlan, ort.SessionOptions] | None = None
        self._lone_options: ort.SessionOptions | None = None
        self.loaded = False

    # -- loading -------------------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Find, verify, open and warm every model (blocking; run it once, from the lifespan)."""
        root = self._settings.models_dir
        for folder in self._model_folders(root):
            record = self.discover(folder)
            self._entries[record.name] = record
            self.load_entries(record.versions.values())
            record.choose_default()
            self._publish_metrics(record.versions.values())
        self.loaded = True

    def _runtime_plan(self) -> tuple[ProviderPlan, ort.SessionOptions]:
        """The execution providers and session options every session is opened with (decided once)."""
        if self._runtime is None:
            plan = plan_providers(self._settings.providers, ort.get_available_providers())
            for note in plan.notes:
                log.warning("providers: %s", note)
            self._runtime = (plan, session_options(self._settings))
            lone = self._settings.ort_lone_threads()
            # Thread counts matter on the CPU only: a GPU session runs its kernels on the device.
            if lone and plan.chosen[:1] == ("CPUExecutionProvider",):
                self._lone_options = session_options(self._settings, lone)
        return self._runtime

    def load_entries(self, entries: Iterable[ModelEntry]) -> None:
        """Verify, open and warm every entry still LOADING (blocking: at start-up, or in a thread at run time)."""
        plan, options = self._runtime_plan()
        for entry in entries:
            if entry.status is ModelStatus.LOADING:
                self._load_version(entry, plan, options)

    def discover(self, folder: Path, only: int | None = None) -> ModelRecord:
        """The model's versions on disk and the ones its policy selects (entries still LOADING), or every version
        FAILED with the reason when `versions.json` is malformed or selects what is not there. `only`: that one
        version, whatever the policy (an explicit load; a malformed `versions.json` is then only noted)."""
        record = ModelRecord(name=folder.name, folder=folder, snapshot=snapshot(folder))
        on_disk = version_folders(folder)
        record.on_disk = list(on_disk)
        try:
            record.policy = read_policy(folder)
            problem = None
        except PolicyError as exc:
            problem = str(exc)
        selected = record.policy.select(record.on_disk) if problem is None else record.on_disk
        if problem is None and record.policy.default is not None and record.policy.default not in selected:
            problem = (
                f"{folder.name}/versions.json: default version {record.policy.default} is not one the policy "
                f"serves ({', '.join(map(str, selected)) or 'none'})"
            )
        record.problem = problem
        if only is not None:
            selected, problem = [only], None
        for number in selected:
            entry = ModelEntry(name=folder.name, folder=on_disk.get(number, folder / str(number)), version=number)
            record.versions[number] = entry
            if problem is not None:
                entry.status, entry.reason = ModelStatus.FAILED, problem
            elif number not in on_disk:
                entry.status = ModelStatus.FAILED
                entry.reason = f"{folder.name}/versions.json lists version {number}, which has no folder with a card"
            elif number == FLAT_VERSION and on_disk[number] != folder and (folder / CARD_FILE).is_file():
                entry.status = ModelStatus.FAILED
                entry.reason = (
                    f"version 1 is both the files in {folder.name}/ and the folder {folder.name}/1/: keep one"
                )
        if record.problem is not None:
            log.error("model versions refused", extra={"model": folder.name, "reason": record.problem})
        return record

    # -- run-time changes (app/core/control.py; on the event loop, each one synchronous step) ------------------
    def install(
        self,
        candidate: ModelRecord,
        loaded: Iterable[ModelEntry],
        deselect: Collection[int] = (),
        reset_pin: bool = False,
    ) -> list[ModelEntry]:
        """Swap freshly loaded versions into the model `candidate` describes (as `discover` read its folder) and
        return the entries taken out, for the caller to drain and free.

        A version that loaded replaces its older copy; one that failed is recorded with its reason, except that an
        older copy that serves keeps serving (its `refused` says why the new one was not taken). The versions in
        `deselect` (no longer on disk or no longer selected by the policy) are taken out only if the model still
        serves without them. `reset_pin`: forget a promotion (the model was loaded anew from its folder)."""
        current = self._entries.get(candidate.name)
        versions = dict(current.versions) if current is not None else {}
        retired: list[ModelEntry] = []
        for fresh in loaded:
            old = versions.get(fresh.version)
            if fresh.ready or old is None or not old.ready:
                versions[fresh.version] = fresh
                if old is not None:
                    retired.append(old)
            else:
                old.refused = f"a new copy of this version was refused (this one still serves): {fresh.reason}"
        if any(entry.ready for number, entry in versions.items() if number not in deselect):
            retired.extend(versions.pop(number) for number in deselect if number in versions)
        keep_policy = candidate.problem is not None and current is not None
        record = ModelRecord(
            name=candidate.name,
            folder=candidate.folder,
            policy=current.policy if keep_policy and current is not None else candidate.policy,
            versions=dict(sorted(versions.items())),
            on_disk=candidate.on_disk,
            pinned=None if reset_pin or current is None or current.pinned not in versions else current.pinned,
            required=current.required if current is not None else False,
            problem=candidate.problem,
            snapshot=candidate.snapshot,
        )
        record.choose_default()
        if record.default is not None:
            record.required = True
            self._released.discard(record.name)
        self._entries[record.name] = record
        self._publish_metrics(record.versions.values(), retired)
        return retired

    def remove(self, name: str, numbers: Collection[int]) -> tuple[list[ModelEntry], bool]:
        """Take versions out of a model; the entries taken out (to drain and free) and whether the model is gone
        (no version of it serves any more: it is removed, and no longer required for readiness). The default
        falls back as at start-up when it was taken out: `versions.json`'s default if it serves, else the
        highest version that serves."""
        current = self._entries.get(name)
        if current is None:
            return [], False
        retired = [entry for number, entry in current.versions.items() if number in numbers]
        versions = {number: entry for number, entry in current.versions.items() if number not in numbers}
        if not any(entry.ready for entry in versions.values()):
            retired.extend(versions.values())
            self._entries = {key: record for key, record in self._entries.items() if key != name}
            self._released.add(name)
            self._publish_metrics((), retired)
            return retired, True
        record = dataclasses.replace(current, versions=versions)
        if record.pinned in numbers:
            record.pinned = None
        record.choose_default()
        self._entries[name] = record
        self._publish_metrics((), retired)
        return retired, False

    def promote(self, name: str, number: int) -> ModelRecord:
        """Make a serving version the model's default (in memory only)."""
        record = dataclasses.replace(self.record(name), pinned=number)
        record.choose_default()
        self._entries[name] = record
        return record

    def refuse(self, name: str, problem: str, snapshot_: dict[str, Fingerprint]) -> None:
        """Note why a change of the model's folder was refused while it serves as before."""
        current = self._entries.get(name)
        if current is not None:
            self._entries[name] = dataclasses.replace(current, problem=problem, snapshot=snapshot_)

    def _publish_metrics(self, serving: Iterable[ModelEntry], retired: Iterable[ModelEntry] = ()) -> None:
        """`ae_model_ready` and `ae_model_load_seconds` of the versions now in place; a version taken out has
        neither any more."""
        if self._metrics is None:
            return
        placed = set()
        for entry in serving:
            labels = (entry.name, str(entry.version))
            placed.add(labels)
            self._metrics.model_ready.labels(*labels).set(1 if entry.ready else 0)
            self._metrics.model_load_seconds.labels(*labels).set(entry.load_seconds or 0.0)
        for entry in retired:
            labels = (entry.name, str(entry.version))
            record = self._entries.get(entry.name)
            if labels in placed or (record is not None and entry.version in record.versions):
                continue
            for gauge in (self._metrics.model_ready, self._metrics.model_load_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)

    def _load_version(self, entry: ModelEntry, plan: ProviderPlan, options: ort.SessionOptions) -> None:
        """Verify, open and warm one version; FAILED with the reason for anything that goes wrong."""
        started = time.perf_counter()
        try:
            self._load(entry, plan, options)
        except (CardError, LoadError) as exc:
            entry.status, entry.reason = ModelStatus.FAILED, str(exc)
        except Exception as exc:  # a corrupt ONNX file raises ORT's own types; report, never crash start-up
            entry.status, entry.reason = (
                ModelStatus.FAILED,
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
            )
        entry.load_seconds = round(time.perf_counter() - started, 4)
        if entry.ready:
            log.info(
                "model loaded",
                extra={
                    "model": entry.name,
                    "version": entry.version,
                    "seconds": entry.load_seconds,
                    **({"providers": entry.providers.as_dict()} if entry.providers else {}),
                },
            )
        else:
            entry.graphs.clear()
            log.error(
                "model failed to load", extra={"model": entry.name, "version": entry.version, "reason": entry.reason}
            )

    def _model_folders(self, root: Path) -> list[Path]:
        if not root.is_dir():
            self._scan_problem = "the models directory (AE_MODELS_DIR) does not exist"
            log.error("no models", extra={"reason": self._scan_problem, "models_dir": str(root)})
            return []
        folders = []
        for path in sorted(root.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue  # staging folders of the exporter are hidden
            if not version_folders(path):
                log.warning("skipping folder without a card", extra={"folder": path.name})
                continue
            if not name_is_valid(path.name):
                log.warning("skipping folder whose name is not a model name", extra={"folder": display_name(path.name)})
                continue
            folders.append(path)
        if not folders:
            self._scan_problem = "no model cards found in the models directory (AE_MODELS_DIR)"
            log.error("no models", extra={"reason": self._scan_problem, "models_dir": str(root)})
        return folders

    def _load(self, entry: ModelEntry, plan: ProviderPlan, options: ort.SessionOptions) -> None:
        card = read_card(entry.folder, entry.name)
        if card.version != str(entry.version):
            shown = display_name(card.version)
            in_version_folder = entry.folder.parent.name == entry.name and version_number(entry.folder.name) is not None
            if not in_version_folder:
                where = f"files directly in {entry.name}/ are version {entry.version}"
            else:
                where = f"it sits in {entry.name}/{entry.version}/ (version {entry.version})"
            raise CardError(f"{entry.name}: the card says version {shown!r}, but {where}")
        check_card(card)
        entry.card = card
        folder = entry.folder.resolve()
        for role, graph_card in card.graphs.items():
            path = (entry.folder / graph_card.file).resolve()
            if path.parent != folder:
                raise LoadError(f"graph {role}: {graph_card.file} resolves outside the model folder")
            try:
                data = read_regular_file(path)
            except OSError as exc:
                raise LoadError(f"graph {role}: cannot read {graph_card.file}: {exc.strerror or exc}") from exc
            if graph_card.bytes is not None and len(data) != graph_card.bytes:
                raise LoadError(
                    f"graph {role}: {graph_card.file} is {len(data)} bytes, the card says {graph_card.bytes}"
                )
            digest = sha256_bytes(data)
            if digest != graph_card.sha256:
                raise LoadError(
                    f"graph {role}: sha256 of {graph_card.file} is {digest}, the card says {graph_card.sha256}"
                )
            # From bytes: the verified bytes are exactly what runs, and a file that refers to external data
            # (which would be read from elsewhere, unverified) cannot load: say so plainly.
            external = external_data_locations(data)
            if external:
                outside = [loc for loc in external if (entry.folder / loc).resolve().parent != folder]
                where = f"outside the model folder ({', '.join(outside)})" if outside else ", ".join(external)
                raise LoadError(
                    f"graph {role}: {graph_card.file} keeps tensors in external data {where}; the service loads "
                    "self-contained ONNX files only (export with external_data=False)"
                )
            try:
                session = ort.InferenceSession(data, options, providers=list(plan.chosen))
            except Exception as exc:
                raise LoadError(
                    f"graph {role}: ONNX Runtime cannot load {graph_card.file}: {str(exc).splitlines()[0][:400]}"
                ) from exc
            _compare_tensors(f"graph {role} input", graph_card.inputs, session.get_inputs())
            _compare_tensors(f"graph {role} output", graph_card.outputs, session.get_outputs())
            lone = None
            if self._lone_options is not None and card.input.fully_convolutional and takes_images(graph_card):
                lone = ort.InferenceSession(data, self._lone_options, providers=list(plan.chosen))
            entry.graphs[role] = GraphSession(
                model=card.name,
                role=role,
                card=graph_card,
                session=session,
                lone_session=lone,
                serving=card.serving,
                version=entry.version,
                generation=next(self._generations),
            )
            report = report_providers(plan, session.get_providers())
            if entry.providers is None or (report.fallback and not entry.providers.fallback):
                entry.providers = report
        for note in entry.providers.notes if entry.providers else ():
            log.warning("providers: %s", note, extra={"model": entry.name})
        for graph_name, graph in list(entry.graphs.items()):
            feeds = warmup_feeds(card, graph.card)
            try:
                self._engine.run_blocking(graph, feeds, "warmup")
                if graph.lone_session is not None:
                    self._engine.run_blocking(graph, feeds, "warmup", lone=True)
                known = self._measured.get(graph.card.sha256)
                if known is None:
                    work = measure_working_memory(self._engine, graph, feeds)
                    radius = measure_receptive_radius(self._engine, graph) if card.input.fully_convolutional else None
                    tile_radius = None
                    if radius is not None:
                        tile_radius = measure_tile_radius(self._engine, graph, radius, self._settings.tile_tolerance)
                    self._measured[graph.card.sha256] = (work, radius, tile_radius)
                else:
                    work, radius, tile_radius = known
            except Exception as exc:
                raise LoadError(f"graph {graph.role}: warm-up failed: {exc}") from exc
            entry.graphs[graph_name] = graph = dataclasses.replace(
                graph,
                work_bytes_per_value=work,
                receptive_radius=radius,
                tile_radius=tile_radius,
                release_feeds=feeds,
            )
            # The probes above ran large calls; what their outputs held in the arenas goes back now.
            self._engine.release_arena(graph, [False, True] if graph.lone_session is not None else [False])
        entry.status = ModelStatus.READY

    # -- lookup --------------------------------------------------------------------------------------------
    def models(self) -> list[ModelRecord]:
        """Every model found, with its versions."""
        return list(self._entries.values())

    def entries(self) -> list[ModelEntry]:
        """One entry per model: its default version (or, when none serves, the entry that says why)."""
        return [record.representative for record in self._entries.values()]

    def names(self) -> list[str]:
        return list(self._entries)

    def knows(self, name: str) -> bool:
        return name in self._entries

    def find(self, name: str) -> ModelRecord | None:
        """The model with its versions, or None when it is not loaded."""
        return self._entries.get(name)

    def record(self, name: str) -> ModelRecord:
        """The model with its versions; ModelNotFound when no such card exists."""
        record = self._entries.get(name)
        if record is None:
            raise ModelNotFound(
                f"no model named {display_name(name)!r}; models: {', '.join(self._entries) or 'none'}",
                {"model": display_name(name), "models": list(self._entries)},
            )
        return record

    def get(self, name: str, version: str | int | None = None) -> ModelEntry:
        """The entry of that version (the default one without a version) whatever its status; ModelNotFound
        (404) when no such model or version exists."""
        record = self.record(name)
        if version is None:
            return record.representative
        number = version if isinstance(version, int) else version_number(version)
        entry = record.versions.get(number) if number is not None else None
        if entry is None:
            shown = display_name(str(version))
            known = ", ".join(map(str, record.versions)) or "none"
            raise ModelNotFound(
                f"model {name!r} has no version {shown!r}; its versions: {known}",
                {"model": name, "version": shown, "versions": [str(v) for v in record.versions]},
            )
        return entry

    def serving(self, name: str, version: str | int | None = None) -> ModelEntry:
        """The entry if it is ready to serve; ModelUnavailable (503) with the reason otherwise."""
        entry = self.get(name, version)
        if not entry.ready:
            reason = entry.reason or "still loading"
            which = f"model {name!r}" if version is None else f"model {name!r} version {entry.version}"
            raise ModelUnavailable(
                f"{which} is not available: {reason}",
                {"model": name, "version": str(entry.version), "status": entry.status.value, "reason": reason},
            )
        return entry

    def readiness(self) -> Readiness:
        """Whether every required model serves a default version (by default: every card found, and at least
        one model)."""
        if not self.loaded:
            return Readiness(False, list(self._settings.required_models or []), {"*": "models are loading"})
        if self._settings.required_models:
            required = [name for name in self._settings.required_models if name not in self._released]
        else:
            required = [name for name, record in self._entries.items() if record.required]
        not_ready: dict[str, str] = {}
        if not required:
            unloaded = "no model serves: every model was unloaded" if self._released else "no models"
            not_ready["*"] = self._scan_problem or unloaded
        for name in required:
            record = self._entries.get(name)
            if record is None:
                not_ready[name] = "required but no card found in the models directory"
            elif record.default is None:
                entry = record.representative
                not_ready[name] = entry.reason or entry.status.value
        return Readiness(not not_ready, required, not_ready)

    @property
    def scan_problem(self) -> str | None:
        return self._scan_problem

    def close(self) -> None:
        """Drop every session (ONNX Runtime frees them when the last reference goes)."""
        for record in self._entries.values():
            for entry in record.versions.values():
                entry.graphs.clear()
        self._entries.clear()
        self.loaded = False
