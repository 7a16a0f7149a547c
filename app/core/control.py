"""Model control at run time, as Triton's model-control modes (`AE_MODEL_CONTROL`): the repository index, load,
unload and promote (the API in `app.api.v2.repository` and `app.api.v1.control` calls these), and the poll of
the models directory.

- **Load** (a model: every version its policy selects, as at start-up; or one version): the folder is read,
  every version verified (size, sha256, card against graph, version against folder), opened and warmed up in a
  thread of its own (nicer than the event loop), while the old copies serve; then `ModelRegistry.install` swaps
  the new entries in, one synchronous step on the event loop. A version that fails leaves what served untouched
  (its older copy keeps serving, or it is listed as failed with the reason). A model load brings the model back
  to its folder: versions its policy no longer selects are unloaded once a selected one serves, and a promotion
  is forgotten.
- **Unload**: `ModelRegistry.remove` takes the versions out (new requests no longer find them), then each
  entry is drained: requests that took it before (the inference handlers count them in `ModelEntry.in_flight`)
  finish, then its queues are closed and its sessions dropped, and freed memory is handed back to the OS. The
  default falls back to the highest version that serves; a model with no version serving is removed (and no
  longer required for readiness).
- **Promote**: the model's default version, in memory only (a restart reads `versions.json` again).
- **Poll** (`AE_MODEL_CONTROL=poll`): every `AE_REPOSITORY_POLL_SECONDS` each model folder's snapshot (names,
  sizes and modification times of its files: `app.core.versions.snapshot`) is compared with the last one seen;
  a model whose folder changed is brought back to its policy (new or changed versions loaded, versions no longer
  selected unloaded once a selected one serves), a removed folder is unloaded. A refused folder is remembered by
  its snapshot: it is not tried again, nor logged again, until its files change. Hidden folders (`.tmp-3/`) are
  a publisher's work in progress: renamed to `3/` (atomic), the version appears complete.

Control calls run one at a time (a lock); none of this touches the request path, which only reads
`ModelRegistry`'s table (one dictionary lookup) and counts itself in and out of its entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from app.core.cards import GRAPH_ROLES, display_name, name_is_valid
from app.core.engine import InferenceEngine, lower_thread_priority
from app.core.errors import (
    ModelControlDisabled,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    SeveralWorkers,
)
from app.core.registry import ModelEntry, ModelRecord, ModelRegistry, ModelStatus
from app.core.versions import (
    FLAT_KEY,
    FLAT_VERSION,
    VERSIONS_FILE,
    Fingerprint,
    numbered_folders,
    snapshot,
    version_folders,
    version_number,
)
from app.settings import Settings

log = logging.getLogger("app.control")

T = TypeVar("T")
Snapshot = dict[str, Fingerprint]
IndexState = Literal["READY", "UNAVAILABLE", "LOADING"]

DRAIN_POLL_SECONDS = 0.005
"""How often an unloaded entry is checked for requests still in flight (the control path only)."""
DRAIN_MARGIN_SECONDS = 5.0
"""Beyond the inference deadline, how long an unload waits for requests still using the entry before it frees
it anyway (a request still reading a slow body then gets a 503 when it reaches the engine)."""


@dataclass(frozen=True)
class IndexEntry:
    """One version of one model in the repository index (Triton's and MLServer's shape)."""

    name: str
    version: str
    state: IndexState
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What a control call left: the model as it now serves (None: it is not loaded)."""

    name: str
    action: str
    version: int | None
    record: ModelRecord | None


def incomplete_reason(name: str, number: int) -> str:
    return (
        f"{name}/{number}/ has no card.json: not a complete version (write it as a hidden folder, e.g. "
        f"{name}/.tmp-{number}/, then rename it to {name}/{number}/)"
    )


class ModelControl:
    """Load, unload, promote, the repository index and the poll, for one app (one worker process)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        engine: InferenceEngine,
        after_unload: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._engine = engine
        self._after_unload = after_unload
        self._lock = asyncio.Lock()
        self._loading: dict[str, set[int]] = {}
        self._unloaded: dict[str, set[int]] = {}
        """Versions unloaded at run time, for the index's reason."""
        self._seen: dict[str, Snapshot] = {}
        """Each model folder as last read (at start-up, by a load, or by the poll)."""
        self._task: asyncio.Task[None] | None = None
        self._operations: set[asyncio.Task[Outcome]] = set()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def mode(self) -> str:
        return self._settings.model_control

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Remember what start-up read; in poll mode, start watching the models directory."""
        self._seen = {record.name: record.snapshot for record in self._registry.models()}
        if self.mode != "none" and self._settings.api_key is None:
            log.warning(
                "model control is on without an API key: anyone who reaches the service can load and unload models",
                extra={"model_control": self.mode},
            )
        if self.mode == "poll":
            self._task = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*self._operations, return_exceptions=True)  # a load in progress finishes
        async with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    async def _detached(self, operation: Coroutine[object, object, Outcome]) -> Outcome:
        """Run a load or unload to its end even if its caller goes away (a client that disconnects cancels its
        request): a load half done would leave versions unswapped, an unload half done sessions unfreed."""
        task = asyncio.get_running_loop().create_task(operation)
        self._operations.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Outcome]) -> None:
        self._operations.discard(task)
        if not task.cancelled():
            task.exception()  # marked as seen: a caller gone away leaves no "exception never retrieved" noise

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        """`func(*args)` in the loading thread: off the event loop, one at a time, nicer than the loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="ae-load",
                initializer=lower_thread_priority,
                initargs=(self._settings.inference_thread_nice,),
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(func, *args))

    # -- what is asked -------------------------------------------------------------------------------------------
    def _check_allowed(self, action: str) -> None:
        if self.mode == "none":
            raise ModelControlDisabled(
                f"{action} refused: model control is off (AE_MODEL_CONTROL=none); start the service with "
                "AE_MODEL_CONTROL=explicit or poll to load, unload and promote models at run time",
                {"model_control": "none"},
            )
        workers = self._settings.workers
        if workers > 1:
            raise SeveralWorkers(
                f"{action} refused: this service runs {workers} worker processes (AE_WORKERS) and the model-control "
                "API acts on the one worker that answers; to change versions on every worker and replica, publish "
                "the version folder and use AE_MODEL_CONTROL=poll, or restart (roll) the service",
                {"workers": workers},
            )

    def _folder(self, name: str) -> Path | None:
        """The model's folder in the repository, if there is one (only a valid model name is looked up)."""
        if not name_is_valid(name):
            return None
        folder = self._settings.models_dir / name
        if folder.is_dir() and (version_folders(folder) or numbered_folders(folder)):
            return folder
        return None

    def _model_name(self, name: str) -> str:
        """The model a control call names: a model name, or a V2 graph name (`dense.encoder`) for its model (a
        call acts on every graph of the model); ModelNotFound when neither is loaded nor on disk."""
        if self._registry.knows(name) or self._folder(name) is not None:
            return name
        model, dot, role = name.rpartition(".")
        if dot and role in GRAPH_ROLES and (self._registry.knows(model) or self._folder(model) is not None):
            return model
        known = sorted(set(self._registry.names()) | set(self._repository_names()))
        raise ModelNotFound(
            f"no model named {display_name(name)!r} is loaded or in the repository (AE_MODELS_DIR); models: "
            f"{', '.join(known) or 'none'}",
            {"model": display_name(name), "models": known},
        )

    @staticmethod
    def _version(name: str, text: str) -> int:
        number = version_number(text)
        if number is None:
            raise ModelNotFound(
                f"model {name!r} has no version {display_name(text)!r}: versions are positive integers (1, 2, ...)",
                {"model": name, "version": display_name(text)},
            )
        return number

    def _repository_names(self) -> list[str]:
        root = self._settings.models_dir
        try:
            children = sorted(root.iterdir())
        except OSError:
            return []
        return [path.name for path in children if not path.name.startswith(".") and self._folder(path.name)]

    # -- load ----------------------------------------------------------------------------------------------------
    async def load_model(self, name: str) -> Outcome:
        """Load (or reload) the model as its folder says: every version its policy selects."""
        self._check_allowed("load")
        return await self._detached(self._load_model(self._model_name(name)))

    async def _load_model(self, name: str) -> Outcome:
        async with self._lock:
            folder = self._folder(name)
            if folder is None:
                raise ModelNotFound(
                    f"model {name!r} has no folder with a card in the repository (AE_MODELS_DIR) any more",
                    {"model": name},
                )
            candidate = await self._in_thread(self._registry.discover, folder)
            self._seen[name] = candidate.snapshot
            current = self._registry.find(name)
            if candidate.problem is not None and current is not None and current.default is not None:
                self._registry.refuse(name, candidate.problem, candidate.snapshot)
                raise ModelLoadFailed(
                    f"model {name!r}: {candidate.problem} (what served before still serves)",
                    {"model": name, "problem": candidate.problem},
                )
            deselect = set(current.versions) - set(candidate.versions) if current is not None else set()
            return await self._load(candidate, list(candidate.versions.values()), deselect, "load", reset_pin=True)

    async def load_version(self, name: str, version: str) -> Outcome:
        """Load (or reload) one version of the model, whatever its policy selects."""
        self._check_allowed("load")
        name = self._model_name(name)
        return await self._detached(self._load_version(name, self._version(name, version)))

    async def _load_version(self, name: str, number: int) -> Outcome:
        async with self._lock:
            folder = self._folder(name)
            on_disk = version_folders(folder) if folder is not None else {}
            if folder is None or number not in on_disk:
                if folder is not None and number in numbered_folders(folder):
                    raise ModelLoadFailed(incomplete_reason(name, number), {"model": name, "version": str(number)})
                raise ModelNotFound(
                    f"model {name!r} has no version {number} in the repository; versions on disk: "
                    f"{', '.join(map(str, on_disk)) or 'none'}",
                    {"model": name, "version": str(number), "on_disk": [str(v) for v in on_disk]},
                )
            candidate = await self._in_thread(self._registry.discover, folder, number)
            key = FLAT_KEY if on_disk[number] == folder else str(number)
            seen = self._seen.setdefault(name, {})
            if key in candidate.snapshot:
                seen[key] = candidate.snapshot[key]
            return await self._load(candidate, list(candidate.versions.values()), set(), "load", number)

    async def _load(
        self,
        candidate: ModelRecord,
        entries: list[ModelEntry],
        deselect: set[int],
        action: str,
        version: int | None = None,
        reset_pin: bool = False,
    ) -> Outcome:
        """Load `entries` in the loading thread, swap them in, drain and free what they replace; ModelLoadFailed
        naming each version refused (the others are in place)."""
        name = candidate.name
        self._loading[name] = {entry.version for entry in entries if entry.status is ModelStatus.LOADING}
        try:
            await self._in_thread(self._registry.load_entries, entries)
        finally:
            self._loading.pop(name, None)
        retired = self._registry.install(candidate, entries, deselect, reset_pin=reset_pin)
        self._unloaded.setdefault(name, set()).difference_update(entry.version for entry in entries if entry.ready)
        record = self._registry.find(name)
        log.info(
            "model control: %s",
            action,
            extra={
                "model": name,
                "loaded": [entry.version for entry in entries if entry.ready],
                "refused": {str(entry.version): entry.reason for entry in entries if not entry.ready},
                "unloaded": sorted({entry.version for entry in retired if self._gone(name, entry.version)}),
                "default_version": record.default if record is not None else None,
            },
        )
        await self._retire(retired)
        failed = [entry for entry in entries if not entry.ready]
        if failed:
            reasons = "; ".join(f"version {entry.version}: {entry.reason}" for entry in failed)
            kept = " (what served before still serves)" if record is not None and record.default is not None else ""
            raise ModelLoadFailed(
                f"model {name!r}: refused {reasons}{kept}",
                {
                    "model": name,
                    "refused": {str(entry.version): entry.reason for entry in failed},
                    "default_version": None if record is None or record.default is None else str(record.default),
                },
            )
        return Outcome(name, action, version, record)

    def _gone(self, name: str, number: int) -> bool:
        record = self._registry.find(name)
        return record is None or number not in record.versions

    # -- unload --------------------------------------------------------------------------------------------------
    async def unload_model(self, name: str) -> Outcome:
        """Unload every version of the model (it is removed, and no longer required for readiness)."""
        self._check_allowed("unload")
        return await self._detached(self._unload_model(self._model_name(name)))

    async def _unload_model(self, name: str) -> Outcome:
        async with self._lock:
            record = self._registry.find(name)
            if record is None:  # on disk but not loaded: nothing to do (as Triton's)
                return Outcome(name, "unload", None, None)
            return await self._unload(name, set(record.versions), None)

    async def unload_version(self, name: str, version: str) -> Outcome:
        """Unload one version of the model; the default falls back when it was the default."""
        self._check_allowed("unload")
        name = self._model_name(name)
        return await self._detached(self._unload_version(name, self._version(name, version)))

    async def _unload_version(self, name: str, number: int) -> Outcome:
        async with self._lock:
            record = self._registry.find(name)
            if record is None or number not in record.versions:
                folder = self._folder(name)
                if folder is not None and number in numbered_folders(folder) | version_folders(folder):
                    return Outcome(name, "unload", number, record)  # not loaded: nothing to do
                loaded = ", ".join(map(str, record.versions)) if record is not None else "none"
                raise ModelNotFound(
                    f"model {name!r} has no version {number}; loaded versions: {loaded}",
                    {"model": name, "version": str(number)},
                )
            return await self._unload(name, {number}, number)

    async def _unload(self, name: str, numbers: set[int], version: int | None) -> Outcome:
        retired, removed = self._registry.remove(name, numbers)
        self._unloaded.setdefault(name, set()).update(entry.version for entry in retired)
        record = self._registry.find(name)
        log.info(
            "model control: unload",
            extra={
                "model": name,
                "unloaded": sorted(entry.version for entry in retired),
                "model_removed": removed,
                "default_version": record.default if record is not None else None,
            },
        )
        await self._retire(retired)
        return Outcome(name, "unload", version, record)

    async def _retire(self, entries: list[ModelEntry]) -> None:
        """Wait until no request uses each entry any more, then close its queues and drop its sessions."""
        if not entries:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.inference_timeout_seconds + DRAIN_MARGIN_SECONDS
        for entry in entries:
            while entry.in_flight > 0 and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_SECONDS)
            if entry.in_flight > 0:
                log.warning(
                    "unloaded version still in use after the inference deadline: freed anyway",
                    extra={"model": entry.name, "version": entry.version, "in_flight": entry.in_flight},
                )
            await self._engine.retire(entry.graphs.values())
            entry.graphs.clear()  # the last references to the sessions: ONNX Runtime frees them now
        if self._after_unload is not None:
            try:
                await self._after_unload()
            except Exception:  # giving memory back is a nicety, never a failure of the unload
                log.exception("after unload")

    # -- promote -------------------------------------------------------------------------------------------------
    def promote(self, name: str, version: str) -> Outcome:
        """Make a serving version the model's default (in memory only: a restart reads `versions.json` again)."""
        self._check_allowed("promote")
        name = self._model_name(name)
        number = self._version(name, version)
        record = self._registry.find(name)
        entry = record.versions.get(number) if record is not None else None
        if entry is None:
            folder = self._folder(name)
            if folder is not None and number in version_folders(folder):
                raise ModelNotLoaded(
                    f"version {number} of model {name!r} is not loaded: load it first "
                    f"(POST /v1/models/{name}/versions/{number}/load)",
                    {"model": name, "version": str(number)},
                )
            raise ModelNotFound(f"model {name!r} has no version {number}", {"model": name, "version": str(number)})
        if not entry.ready:
            raise ModelNotLoaded(
                f"version {number} of model {name!r} does not serve: {entry.reason or entry.status.value}",
                {"model": name, "version": str(number), "reason": entry.reason},
            )
        promoted = self._registry.promote(name, number)
        log.info("model control: promote", extra={"model": name, "default_version": promoted.default})
        return Outcome(name, "promote", number, promoted)

    # -- the index -----------------------------------------------------------------------------------------------
    async def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every version of every model in the repository or loaded, with its state and the reason it does not
        serve (Triton's repository index)."""
        on_disk = await asyncio.to_thread(self._read_repository)  # not the loading thread: it may be busy
        found: list[IndexEntry] = []
        for name in sorted(set(on_disk) | set(self._registry.names())):
            record = self._registry.find(name)
            disk = on_disk.get(name, {})
            loading = self._loading.get(name, set())
            numbers = set(disk) | set(record.versions if record is not None else ()) | loading
            for number in sorted(numbers):
                entry = record.versions.get(number) if record is not None else None
                state, reason = self._state(name, number, entry, disk, loading, record)
                if not ready_only or state == "READY":
                    found.append(IndexEntry(name, str(number), state, reason))
        return found

    def _state(
        self,
        name: str,
        number: int,
        entry: ModelEntry | None,
        disk: dict[int, bool],
        loading: set[int],
        record: ModelRecord | None,
    ) -> tuple[IndexState, str]:
        if entry is not None and record is not None:
            if entry.ready:
                return "READY", record.note(entry) or ""
            if entry.status is ModelStatus.LOADING:
                return "LOADING", ""
            return "UNAVAILABLE", entry.reason or "failed"
        if number in loading:
            return "LOADING", ""
        if not disk.get(number, True):
            return "UNAVAILABLE", incomplete_reason(name, number)
        if number in self._unloaded.get(name, set()):
            return "UNAVAILABLE", "unloaded"
        if record is None:
            return "UNAVAILABLE", "not loaded"
        return "UNAVAILABLE", "not loaded: outside the version policy (versions.json)"

    def _read_repository(self) -> dict[str, dict[int, bool]]:
        """Each model folder's versions on disk, and whether each has a card (blocking: in a thread)."""
        found: dict[str, dict[int, bool]] = {}
        for name in self._repository_names():
            folder = self._settings.models_dir / name
            complete = version_folders(folder)
            found[name] = {number: number in complete for number in {*numbered_folders(folder), *complete}}
        return found

    # -- the poll ------------------------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.repository_poll_seconds)
            try:
                await self.poll_once()
            except Exception:  # a bug here must not end the poll
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Look at the models directory once and bring every model whose folder changed back to it."""
        changes = await asyncio.to_thread(self._changed_folders, dict(self._seen))
        for name, folder, now in changes:
            async with self._lock:
                await self._sync(name, folder, now)

    def _changed_folders(self, seen: dict[str, Snapshot]) -> list[tuple[str, Path | None, Snapshot]]:
        """Model folders whose snapshot differs from the one seen, new model folders (with a version), and
        folders gone (blocking: in a thread)."""
        changes: list[tuple[str, Path | None, Snapshot]] = []
        present = set()
        for name in self._repository_names():
            folder = self._settings.models_dir / name
            present.add(name)
            now = snapshot(folder)
            if now != seen.get(name):
                changes.append((name, folder, now))
        changes.extend((name, None, {}) for name in sorted(set(seen) - present))
        return changes

    async def _sync(self, name: str, folder: Path | None, now: Snapshot) -> None:
        """Bring one model back to its folder after a change the poll saw."""
        before = self._seen.get(name)
        if folder is None:
            self._seen.pop(name, None)
            record = self._registry.find(name)
            if record is not None:
                log.info("repository poll: model folder gone", extra={"model": name})
                await self._unload(name, set(record.versions), None)
            return
        if now == before:
            return  # a load through the API has read it meanwhile
        candidate = await self._in_thread(self._registry.discover, folder)
        self._seen[name] = candidate.snapshot  # remembered even when refused: unchanged, it is not tried again
        before = before or {}
        now = candidate.snapshot
        changed = {key for key in now.keys() | before.keys() if now.get(key) != before.get(key)}
        current = self._registry.find(name)
        if candidate.problem is not None and current is not None and current.default is not None:
            self._registry.refuse(name, candidate.problem, candidate.snapshot)
            return  # discover logged it; what served keeps serving
        changed_versions = {FLAT_VERSION if key == FLAT_KEY else int(key) for key in changed if key != VERSIONS_FILE}
        loaded = set(current.versions) if current is not None else set()
        entries = [
            entry for number, entry in candidate.versions.items() if number in changed_versions or number not in loaded
        ]
        complete = version_folders(folder)
        # A version kept serving outside the selection (nothing selected serves) is reloaded when its files change.
        kept = {number for number in loaded - set(candidate.versions) if current and current.versions[number].ready}
        entries.extend(ModelEntry(name, complete[n], n) for n in sorted(kept & changed_versions) if n in complete)
        incomplete = {number for number in numbered_folders(folder) if number not in complete}
        for number in sorted(incomplete & changed_versions):
            reason = incomplete_reason(name, number)
            log.error("model failed to load", extra={"model": name, "version": number, "reason": reason})
            entries.append(ModelEntry(name, folder / str(number), number, ModelStatus.FAILED, reason))
        deselect = loaded - set(candidate.versions) - incomplete
        if not entries and not deselect:
            return
        # A refusal is logged and listed with its reason (index, /readyz); tried again when its files change.
        with contextlib.suppress(ModelLoadFailed):
            await self._load(candidate, entries, deselect, "repository poll", reset_pin=VERSIONS_FILE in changed)
