"""The one caller of `session.run`, with the dynamic batcher, the bounded queue and the deadlines in front of it.

Every ONNX Runtime call of the service (requests of every protocol, and the warm-up at load) goes through
`InferenceEngine`; routes only ever `await engine.run(graph, feeds, endpoint)`.

How a request travels (per worker process):

1. `run` checks the feeds against the card (names, dtype, shapes) and puts the request in the queue of its model
   graph. A full queue (`queue_max_requests`) refuses it at once: `Overloaded` (503 with `Retry-After`).
2. One dispatcher task per graph, on the event loop, sends the oldest request once a full batch
   (`batch_max_rows` rows) is waiting or once it has waited `batch_max_delay_ms`, and as soon as one of the
   process's ONNX Runtime slots (`inference_concurrency`) is free. While every slot is busy, later requests keep
   joining the queue, so under load batches fill by themselves.
3. The batch takes the oldest request plus every later one with the same sample shape (images of one size,
   series of one length) while the rows fit; a request larger than the maximum runs alone, never split.
4. A worker thread concatenates the inputs, runs ONNX Runtime once, checks the output shapes, splits the outputs
   back in order and checks each caller's part for non-finite values (one caller's NaN never fails another).
5. Each request has a deadline (`inference_timeout_seconds`, queue plus compute): past it the caller gets
   `InferenceTimeout` (504) and leaves the queue. A caller that goes away (its task is cancelled, e.g. the client
   disconnected) leaves the queue the same way, and its result is dropped. A running batch whose callers have all
   gone is told to stop (`RunOptions.terminate`).

`batching=False` keeps the queue, the bound and the deadline but never merges two requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from app.core.budget import MemoryBudget
from app.core.cards import GraphCard, ServingSection, TensorSpec
from app.core.errors import InferenceError, InferenceTimeout, InvalidInput, ModelUnavailable, Overloaded, ServiceError
from app.core.validation import Limits
from app.runtime.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("app.inference")

Outputs = dict[str, np.ndarray]
SERVING_KNOBS = (
    "batching",
    "batch_max_rows",
    "batch_max_values",
    "batch_max_delay_ms",
    "queue_max_requests",
    "inference_timeout_seconds",
)


DEFAULT_WORK_BYTES_PER_VALUE = 1024.0
"""Working memory assumed per input value where it cannot be measured (no /proc): above every graph measured."""
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
SHRINK_ARENA_ABOVE_BYTES = 64 * 1024 * 1024
"""An ONNX Runtime call expected to need more working memory than this gives its arena memory back afterwards
(run option `memory.enable_memory_arena_shrinkage`): the arena otherwise keeps the largest call's memory for the
life of the process, outside every budget."""
RELEASE_DELAY_SECONDS = 0.05
"""How long a graph must stay idle after a large call before its release run (`GraphSession.release_feeds`): a
tiled image's next tile, which arrives within this, would use the memory again."""


@dataclass(frozen=True)
class GraphSession:
    """An open ONNX Runtime session for one graph of one model, with the card's description of its tensors."""

    model: str
    role: str
    card: GraphCard
    session: ort.InferenceSession
    serving: ServingSection | None = None
    lone_session: ort.InferenceSession | None = None
    """The same graph with more intra-op threads (`Settings.lone_intra_op_threads`), for a large call that runs
    alone in its process (`InferenceEngine.lone`); None: the graph has only `session`."""
    work_bytes_per_value: float = DEFAULT_WORK_BYTES_PER_VALUE
    """ONNX Runtime's working memory (activations, outputs, scratch) per input value, measured at load
    (`app.core.registry.measure_working_memory`); what a request reserves from the inference memory budget."""
    receptive_radius: int | None = None
    """Fully convolutional image graphs: how far (pixels) an input pixel reaches in the output, measured at load
    (`app.core.registry.measure_receptive_radius`). None: not tileable."""
    tile_radius: int | None = None
    """What tiles overlap by (plus a margin): the radius beyond which the rest of the image moves an output pixel by
    at most `tile_tolerance` (`app.core.registry.measure_tile_radius`); at most `receptive_radius`."""
    version: int = 1
    """The model version the graph belongs to (`app.core.versions`): versions never share a queue or a batch."""
    generation: int = 0
    """Which load of the version this is (the registry counts loads): while a reloaded version's old copy finishes
    its requests, the two copies keep separate queues (`InferenceEngine._queue_for`)."""
    release_feeds: Mapping[str, np.ndarray] | None = None
    """A tiny input (the warm-up sample) run with arena shrinkage once the graph is idle after a large call: ONNX
    Runtime shrinks only the regions that are free when a run ends, and a large call's own outputs still sit in
    its arena then (measured: 26 MiB of 2 1024x1024 photos kept until the next run; ~110 MiB after a burst of ten,
    four at a time). The next run finds them free. None: no release runs."""

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.card.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.card.outputs

    @property
    def label(self) -> str:
        return f"{self.model}.{self.role}"

    @property
    def key(self) -> tuple[str, int, str]:
        """What the graph's queue is found by: model, version and role."""
        return (self.model, self.version, self.role)


@dataclass(frozen=True)
class BatchPolicy:
    """The serving knobs of one model graph, resolved: environment > the card's `serving` section > defaults."""

    batching: bool
    max_rows: int
    max_values: int
    max_delay_seconds: float
    queue_max_requests: int
    timeout_seconds: float

    @classmethod
    def resolve(cls, settings: Settings, graph: GraphSession) -> BatchPolicy:
        values: dict[str, Any] = {}
        for knob in SERVING_KNOBS:
            value = getattr(settings, knob)
            card_value = getattr(graph.serving, knob, None) if graph.serving is not None else None
            if knob not in settings.model_fields_set and card_value is not None:
                value = card_value
            values[knob] = value
        return cls(
            # A graph whose inputs and outputs do not all share one leading batch axis cannot be merged/split.
            batching=bool(values["batching"]) and shares_batch_axis(graph.card),
            max_rows=int(values["batch_max_rows"]),
            max_values=int(values["batch_max_values"]),
            max_delay_seconds=float(values["batch_max_delay_ms"]) / 1000.0,
            queue_max_requests=int(values["queue_max_requests"]),
            timeout_seconds=float(values["inference_timeout_seconds"]),
        )


def shares_batch_axis(card: GraphCard) -> bool:
    """Whether every input and output has the same named (dynamic) first axis, so rows can be merged and split."""
    firsts = {spec.shape[0] if spec.shape else None for spec in (*card.inputs, *card.outputs)}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


def _bind_axes(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the named (dynamic) axes as the given input arrays set them."""
    bound: dict[str, int] = {}
    for spec in specs:
        shape = arrays[spec.name].shape
        for want, got in zip(spec.shape, shape, strict=False):
            if isinstance(want, str):
                bound.setdefault(want, int(got))
    return bound


def check_shape(spec: TensorSpec, shape: tuple[int, ...], axes: Mapping[str, int]) -> str | None:
    """Why `shape` does not fit `spec` given the named axes bound so far, or None when it fits."""
    if len(shape) != len(spec.shape):
        return f"rank {len(shape)} (shape {list(shape)}), expected rank {len(spec.shape)} {spec.shape}"
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        expected = axes.get(want) if isinstance(want, str) else want
        if expected is not None and expected != got:
            return f"axis {axis} ({want}) is {got}, expected {expected} (shape {list(shape)} vs {spec.shape})"
    return None


class _Request:
    """One caller's feeds waiting in a graph queue, with the future its caller awaits."""

    __slots__ = ("batch", "endpoint", "enqueued", "feeds", "future", "key", "rows", "values")

    def __init__(self, feeds: Mapping[str, np.ndarray], endpoint: str, future: asyncio.Future[Outputs], now: float):
        self.feeds = feeds
        self.endpoint = endpoint
        self.future = future
        self.enqueued = now
        first = next(iter(feeds.values()))
        self.rows = int(first.shape[0]) if first.ndim else 0
        self.values = sum(int(array.size) for array in feeds.values())
        # Requests merge only when every input has the same sample shape (image size, series length) and dtype.
        self.key = tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feeds.items()))
        self.batch: _Batch | None = None


@dataclass
class _Batch:
    """Requests sent to ONNX Runtime together."""

    requests: list[_Request]
    run_options: ort.RunOptions = field(default_factory=ort.RunOptions)
    terminated: bool = False
    lone: bool = False
    """Runs on the graph's `lone_session`: no other ONNX Runtime call was in flight in the process when it
    started."""
    shrink: bool = False
    """A large call: its run gives the arena's free memory back, and the graph's release run follows it."""

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.requests)

    @property
    def endpoint(self) -> str:
        endpoints = {r.endpoint for r in self.requests}
        return endpoints.pop() if len(endpoints) == 1 else "mixed"


class _GraphQueue:
    """The bounded queue and the dispatcher task of one model graph (in one worker process)."""

    def __init__(self, engine: InferenceEngine, graph: GraphSession, policy: BatchPolicy) -> None:
        self.engine = engine
        self.graph = graph
        self.policy = policy
        self.waiting: deque[_Request] = deque()
        self.rows_waiting = 0
        self._waker: asyncio.Future[None] | None = None
        self._idle = False
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[Any]] = set()
        self._unreleased: set[bool] = set()
        """Sessions (by `lone`) that ran a large call since their last release run."""
        self._release_timer: asyncio.TimerHandle | None = None

    # -- the caller's side ---------------------------------------------------------------------------------
    async def submit(self, feeds: Mapping[str, np.ndarray], endpoint: str) -> Outputs:
        policy = self.policy
        if len(self.waiting) >= policy.queue_max_requests:
            self.engine.count_rejected(self.graph, "queue_full")
            raise Overloaded(
                f"{self.graph.label} is overloaded: {len(self.waiting)} requests already wait for it in this worker "
                f"(queue_max_requests={policy.queue_max_requests}); retry after the Retry-After delay",
                {"model": self.graph.model, "graph": self.graph.role, "queue_max_requests": policy.queue_max_requests},
                {"Retry-After": str(self.engine.retry_after_seconds)},
            )
        loop = asyncio.get_running_loop()
        request = _Request(feeds, endpoint, loop.create_future(), loop.time())
        self.waiting.append(request)
        self.rows_waiting += request.rows
        self.engine.set_queue_depth(self.graph, len(self.waiting))
        self._start()
        if self._idle or not policy.batching or self.rows_waiting >= policy.max_rows:
            self._wake()
        # The deadline is one timer that fails the future (cheaper per request than `asyncio.wait_for`).
        deadline = loop.call_later(policy.timeout_seconds, self._expire, request)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._abandon(request)
            self.engine.count_rejected(self.graph, "cancelled")
            raise
        finally:
            deadline.cancel()

    def _expire(self, request: _Request) -> None:
        """The request's deadline passed before its result: it leaves the queue (or its batch) with a 504."""
        if request.future.done():
            return
        policy = self.policy
        request.future.set_exception(
            InferenceTimeout(
                f"{self.graph.label} did not answer within the inference deadline of {policy.timeout_seconds:g} s "
                "(queue wait plus computation); the request was dropped",
                {"model": self.graph.model, "graph": self.graph.role, "timeout_seconds": policy.timeout_seconds},
            )
        )
        self._abandon(request)
        self.engine.count_rejected(self.graph, "timeout")

    def _abandon(self, request: _Request) -> None:
        """The caller is gone (deadline, cancellation): leave the queue, or stop its batch if nobody else waits."""
        if request.batch is None:
            try:
                self.waiting.remove(request)
            except ValueError:
                return
            self.rows_waiting -= request.rows
            self.engine.set_queue_depth(self.graph, len(self.waiting))
            return
        batch = request.batch
        if not batch.terminated and all(r.future.done() for r in batch.requests):
            batch.terminated = True
            batch.run_options.terminate = True

    # -- the dispatcher ------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name=f"batcher {self.graph.label}")

    def _wake(self) -> None:
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    async def _sleep(self, timeout: float | None) -> None:
        """Until `submit` wakes us (or `timeout` seconds pass)."""
        loop = asyncio.get_running_loop()
        self._waker = waker = loop.create_future()
        self._idle = timeout is None
        handle = loop.call_later(timeout, _resolve, waker) if timeout is not None else None
        try:
            await waker
        finally:
            self._waker = None
            self._idle = False
            if handle is not None:
                handle.cancel()

    async def _dispatch(self) -> None:
        while True:
            try:
                await self._dispatch_batches()
            except Exception:  # a bug here must not leave callers waiting for their deadline
                log.exception("batcher of %s failed; failing its waiting requests and restarting", self.graph.label)
                while self.waiting:
                    request = self.waiting.popleft()
                    if not request.future.done():
                        request.future.set_exception(InferenceError(f"{self.graph.label}: the batcher failed"))
                self.rows_waiting = 0
                self.engine.set_queue_depth(self.graph, 0)

    async def _dispatch_batches(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        slots = self.engine.slots()
        while True:
            if not self.waiting:
                await self._sleep(None)
                continue
            if policy.batching and policy.max_delay_seconds > 0 and self.rows_waiting < policy.max_rows:
                remaining = self.waiting[0].enqueued + policy.max_delay_seconds - loop.time()
                if remaining > 0:
                    await self._sleep(remaining)
                    continue
            await slots.acquire()
            if not self.waiting:  # every waiting caller left while we waited for a slot
                slots.release()
                continue
            try:
                batch = self._take()
            except BaseException:
                slots.release()
                raise
            self._launch(batch, loop)
            del batch  # sleeping with it would keep the last batch's inputs alive until the next one

    def _take(self) -> _Batch:
        """The oldest request plus later ones of the same sample shape while the rows fit (order kept)."""
        head = self.waiting.popleft()
        members = [head]
        rows, values = head.rows, head.values
        max_rows, max_values = self.policy.max_rows, self.policy.max_values
        if self.policy.batching and 0 < rows < max_rows and values < max_values and self.waiting:
            rest: deque[_Request] = deque()
            while self.waiting and rows < max_rows:
                request = self.waiting.popleft()
                fits = rows + request.rows <= max_rows and values + request.values <= max_values
                if request.key == head.key and request.rows > 0 and fits:
                    members.append(request)
                    rows += request.rows
                    values += request.values
                else:
                    rest.append(request)
            rest.extend(self.waiting)
            self.waiting = rest
        self.rows_waiting -= rows
        self.engine.set_queue_depth(self.graph, len(self.waiting))
        batch = _Batch(members)
        if (
            self.engine.arena
            and sum(r.values for r in members) * self.graph.work_bytes_per_value > SHRINK_ARENA_ABOVE_BYTES
        ):
            batch.run_options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
            batch.shrink = True
        for request in members:
            request.batch = batch
        return batch

    def _launch(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        engine = self.engine
        engine.observe_queue_wait(self.graph, [loop.time() - r.enqueued for r in batch.requests])
        batch.lone = engine.lone(self.graph, sum(r.values for r in batch.requests))
        engine.calls_in_flight += 1
        try:
            job = loop.run_in_executor(engine.executor(), engine.compute_batch, self.graph, batch)
        except RuntimeError:  # the executor is shut down: the service is stopping
            engine.calls_in_flight -= 1
            engine.slots().release()
            _settle(batch, ModelUnavailable("the service is shutting down"))
            _release(batch)
            return
        self._running.add(job)
        job.add_done_callback(lambda done: self._finished(done, batch))

    def _finished(self, job: asyncio.Future[list[Outputs | ServiceError]], batch: _Batch) -> None:
        self._running.discard(job)
        self.engine.calls_in_flight -= 1
        self.engine.slots().release()
        try:
            if job.cancelled():
                _settle(batch, ModelUnavailable("the service is shutting down"))
                return
            error = job.exception()
            if error is not None:
                log.error("batch of %s failed unexpectedly: %r", self.graph.label, error)
                _settle(batch, InferenceError(f"{self.graph.label} failed", {"model": self.graph.model}))
                return
            for request, outcome in zip(batch.requests, job.result(), strict=True):
                if request.future.done():  # the caller left (deadline or cancellation): drop its result
                    continue
                if isinstance(outcome, ServiceError):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
        finally:
            _release(batch)
            if batch.shrink:
                self._unreleased.add(batch.lone)
            self._schedule_release()

    # -- giving a large call's memory back ------------------------------------------------------------------
    def _schedule_release(self) -> None:
        if self._unreleased and self.graph.release_feeds is not None and self._release_timer is None:
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(RELEASE_DELAY_SECONDS, self._release_if_idle, loop)

    def _release_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the release for every session that ran a large call, if the graph is idle; else the next call's end
        schedules it again."""
        self._release_timer = None
        if self.waiting or self._running or not self._unreleased:
            return
        sessions, self._unreleased = sorted(self._unreleased), set()
        try:
            job = loop.run_in_executor(self.engine.executor(), self.engine.release_arena, self.graph, sessions)
        except RuntimeError:  # the executor is shut down: the service is stopping
            return
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def aclose(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            # The cancelled task keeps its CancelledError, whose traceback holds the dispatcher's frame, which
            # holds this queue: dropped here, the queue (and the session of an unloaded version) is freed at once
            # rather than at the collector's next full pass.
            self._task = None
        while self.waiting:
            request = self.waiting.popleft()
            if not request.future.done():
                request.future.set_exception(ModelUnavailable("the service is shutting down"))
        self.rows_waiting = 0
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by `nice` (Linux: per thread), so that when the CPUs are saturated the
    event loop (HTTP, health, batching) runs before ONNX Runtime compute, which only feeds on what it parses."""
    if nice <= 0:
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at the normal priority
        log.debug("cannot lower the priority of the inference thread: %s", exc)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _release(batch: _Batch) -> None:
    """The batch is over: break the request <-> batch reference cycle.

    Left to the cyclic garbage collector, every request's inputs (and the request body they view, 200 KB for a
    64-row .npy) outlived the request: cycles of requests that were in flight during a collection are promoted
    to older generations, which are collected rarely. Under 64-row .npy load at concurrency 32 that held ~60 MB
    of bodies for minutes, and RSS rose by ~100 MiB."""
    for request in batch.requests:
        request.batch = None


def _settle(batch: _Batch, error: ServiceError) -> None:
    for request in batch.requests:
        if not request.future.done():
            request.future.set_exception(error)


class InferenceEngine:
    """Runs graphs: queued and batched per model graph, off the event loop, outputs checked, metrics recorded."""

    def __init__(self, metrics: Metrics | None, settings: Settings, memory: MemoryBudget | None = None) -> None:
        self._metrics = metrics
        self._settings = settings
        self.memory = memory  # the inference memory budget (app/core/budget.py); None: unbounded
        self.limits = Limits.from_settings(self._settings)
        self._queues: dict[tuple[str, int, str], _GraphQueue] = {}
        self._older: dict[tuple[tuple[str, int, str], int], _GraphQueue] = {}
        """Queues of older copies of a reloaded version, by key and generation, until they are retired."""
        self._retired: set[int] = set()
        """Generations of graphs retired (unloaded): a straggler still holding one is refused, not queued."""
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self.calls_in_flight = 0
        """ONNX Runtime calls running now in this process (counted on the event loop, at launch and finish)."""
        self.lone_calls = 0
        """Calls that ran on a lone-call session, since start (reported with the engine's settings)."""
        self.arena_releases = 0
        """Release runs (`release_arena`) since start."""

    @property
    def retry_after_seconds(self) -> int:
        """The `Retry-After` of an `Overloaded` answer (the setting the in-flight cap uses too)."""
        return int(self._settings.retry_after_seconds)

    @property
    def arena(self) -> bool:
        """Whether the sessions use ONNX Runtime's CPU memory arena (which a run may be asked to shrink)."""
        return bool(self._settings.cpu_mem_arena)

    @property
    def concurrency(self) -> int:
        """ONNX Runtime calls in flight at most in this process."""
        return self._settings.ort_concurrency()

    def lone(self, graph: GraphSession, values: int) -> bool:
        """Whether a call of `values` input values on `graph` takes its lone-call session: it has one, the call is
        large enough (`lone_min_values`) and nothing else runs in the process now. A call that starts while a lone
        one runs takes the ordinary session: for its duration the CPUs hold one thread more than they have,
        which costs the lone call some speed but never makes the other wait."""
        if graph.lone_session is None or self.calls_in_flight or values < self._settings.lone_min_values:
            return False
        self.lone_calls += 1
        return True

    def policy(self, graph: GraphSession) -> BatchPolicy:
        """The batching, queue and deadline knobs in force for `graph`."""
        return BatchPolicy.resolve(self._settings, graph)

    async def run(self, graph: GraphSession, feeds: Mapping[str, np.ndarray], endpoint: str) -> Outputs:
        """Run `graph` on `feeds` (batched with concurrent callers when allowed); returns every output by name."""
        self._check_inputs(graph, feeds)
        values = sum(int(array.size) for array in feeds.values())
        self.limits.check_request_values(
            values, f"{graph.label}: the request holds", {"model": graph.model, "graph": graph.role}
        )
        queue = self._queues.get(graph.key)
        if queue is None or queue.graph is not graph:
            queue = self._queue_for(graph)
        rows = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        chunk = self._chunk_rows(graph, rows, values)
        if chunk >= rows:
            return await self._submit(queue, feeds, endpoint, values)
        parts = []
        for start in range(0, rows, chunk):
            part = {name: array[start : start + chunk] for name, array in feeds.items()}
            parts.append(await self._submit(queue, part, endpoint, sum(int(a.size) for a in part.values())))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _queue_for(self, graph: GraphSession) -> _GraphQueue:
        """The queue of `graph` when it is not the current one of its key: a new load of the version takes the key
        over, and requests that still hold an older copy (a reload being swapped in) keep their own queue, so the
        two never replace each other's queue on every request."""
        if graph.generation in self._retired:
            raise ModelUnavailable(
                f"{graph.label} version {graph.version} was unloaded while this request was on its way; retry",
                {"model": graph.model, "version": str(graph.version)},
            )
        current = self._queues.get(graph.key)
        if current is not None and current.graph.generation > graph.generation:
            older = self._older.get((graph.key, graph.generation))
            if older is None or older.graph is not graph:
                older = self._older[(graph.key, graph.generation)] = _GraphQueue(self, graph, self.policy(graph))
            return older
        if current is not None and current.graph.generation < graph.generation:
            self._older[(graph.key, current.graph.generation)] = current
        queue = self._queues[graph.key] = _GraphQueue(self, graph, self.policy(graph))
        return queue

    async def retire(self, graphs: Iterable[GraphSession]) -> None:
        """Close the queues of graphs that no longer serve (an unloaded or replaced version whose requests have
        all finished): their dispatchers stop and nothing keeps the sessions any more."""
        for graph in graphs:
            self._retired.add(graph.generation)
            queues = [self._older.pop((graph.key, graph.generation), None)]
            current = self._queues.get(graph.key)
            if current is not None and current.graph is graph:
                queues.append(self._queues.pop(graph.key))
            for queue in queues:
                if queue is not None:
                    await queue.aclose()

    def _chunk_rows(self, graph: GraphSession, rows: int, values: int) -> int:
        """Rows per ONNX Runtime call for a request: all of them, unless its working memory would exceed a quarter
        of the inference memory budget and its rows are independent (one shared batch axis); then as many as fit
        in that quarter (at least one), so that a big request runs as several calls instead of being refused."""
        if self.memory is None or rows <= 1:
            return rows
        quarter = self.memory.limit // 4
        if values * graph.work_bytes_per_value <= quarter or not shares_batch_axis(graph.card):
            return rows
        return max(1, int(quarter // (values / rows * graph.work_bytes_per_value)))

    async def _submit(self, queue: _GraphQueue, feeds: Mapping[str, np.ndarray], endpoint: str, values: int) -> Outputs:
        memory = self.memory
        need = int(values * queue.graph.work_bytes_per_value)
        if memory is None or need <= 0:
            return await queue.submit(feeds, endpoint)
        if not memory.try_acquire(need):  # the common case takes no await
            await memory.acquire(need, f"{queue.graph.label} on {values} input values")
        try:
            return await queue.submit(feeds, endpoint)
        finally:
            memory.release(need)

    def run_blocking(
        self,
        graph: GraphSession,
        feeds: Mapping[str, np.ndarray],
        endpoint: str,
        shrink_arena: bool = False,
        lone: bool = False,
    ) -> Outputs:
        """Run `graph` on `feeds` in the calling thread, outside the queue (the warm-up at load); `shrink_arena`:
        give ONNX Runtime's arena memory back afterwards; `lone`: on its lone-call session."""
        axes = self._check_inputs(graph, feeds)
        options = None
        if shrink_arena and self.arena:
            options = ort.RunOptions()
            options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
        outputs = self._session_run(graph, feeds, endpoint, options, lone)
        self._check_output_shapes(graph, outputs, axes)
        self._check_finite(graph, outputs)
        return outputs

    async def aclose(self) -> None:
        """Stop the dispatchers, fail whatever still waits, wait for running calls, release the threads."""
        queues = [*self._queues.values(), *self._older.values()]
        self._queues, self._older = {}, {}
        for queue in queues:
            await queue.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- shared resources, created in the running loop on first use -------------------------------------------
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency,
                thread_name_prefix="ae-onnx",
                initializer=lower_thread_priority,
                initargs=(self._settings.inference_thread_nice,),
            )
        return self._executor

    # -- the worker thread's side ---------------------------------------------------------------------------
    def compute_batch(self, graph: GraphSession, batch: _Batch) -> list[Outputs | ServiceError]:
        """One ONNX Runtime call for the whole batch, split back per request (runs in a worker thread)."""
        requests = batch.requests
        if len(requests) == 1:
            feeds = requests[0].feeds
        else:
            feeds = {name: np.concatenate([r.feeds[name] for r in requests]) for name in requests[0].feeds}
        try:
            outputs = self._session_run(graph, feeds, batch.endpoint, batch.run_options, batch.lone)
            self._check_output_shapes(graph, outputs, _bind_axes(graph.inputs, feeds))
        except InferenceError as error:
            if batch.terminated or len(requests) == 1:
                return [error] * len(requests)
            # Whatever failed, one request must not fail the others: run each on its own.
            log.warning("merged batch of %s failed; running its %d requests one by one", graph.label, len(requests))
            return [self._compute_one(graph, r) for r in requests]
        try:  # one pass over the whole batch; only when it fails is each caller's share checked on its own
            self._check_finite(graph, outputs)
            all_finite = True
        except InferenceError:
            all_finite = False
        results: list[Outputs | ServiceError] = []
        start = 0
        for request in requests:
            stop = start + request.rows
            part = outputs if len(requests) == 1 else {name: v[start:stop] for name, v in outputs.items()}
            start = stop
            if not all_finite:
                try:
                    self._check_finite(graph, part)
                except InferenceError as error:
                    results.append(error)
                    continue
            results.append(part)
        return results

    def release_arena(self, graph: GraphSession, sessions: list[bool]) -> None:
        """Run `graph.release_feeds` with arena shrinkage on its ordinary and/or lone session (`sessions`, by
        `lone`), so the regions a large call's outputs held go back to the OS (runs in a worker thread)."""
        if graph.release_feeds is None or not self.arena:
            return
        options = ort.RunOptions()
        options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
        for lone in sessions:
            session = graph.lone_session if lone and graph.lone_session is not None else graph.session
            try:
                session.run(None, dict(graph.release_feeds), options)
            except Exception as exc:  # the same sample ran at load; a failure here only costs memory
                log.warning("release run of %s failed: %s", graph.label, exc)
        self.arena_releases += 1

    def _compute_one(self, graph: GraphSession, request: _Request) -> Outputs | ServiceError:
        try:
            outputs = self._session_run(graph, request.feeds, request.endpoint, None)
            self._check_output_shapes(graph, outputs, _bind_axes(graph.inputs, request.feeds))
            self._check_finite(graph, outputs)
        except InferenceError as error:
            return error
        return outputs

    def _session_run(
        self,
        graph: GraphSession,
        feeds: Mapping[str, np.ndarray],
        endpoint: str,
        options: ort.RunOptions | None,
        lone: bool = False,
    ) -> Outputs:
        session = graph.lone_session if lone and graph.lone_session is not None else graph.session
        started = time.perf_counter()
        try:
            values = session.run(None, dict(feeds), options)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidArgument, RuntimeException)
            if options is not None and options.terminate:
                raise InferenceError(f"{graph.label}: stopped, every caller had left") from exc
            log.error("onnx runtime failed on %s: %s", graph.label, exc)
            raise InferenceError(
                f"ONNX Runtime failed on {graph.label}: {str(exc).splitlines()[0][:300]}",
                {"model": graph.model, "graph": graph.role},
            ) from exc
        elapsed = time.perf_counter() - started
        if self._metrics is not None and endpoint != "warmup":
            rows = next(iter(feeds.values())).shape[0] if feeds else 0
            labels = (graph.model, str(graph.version), graph.role, endpoint)
            self._metrics.child(self._metrics.batch_size, *labels).observe(rows)
            self._metrics.child(self._metrics.inference_latency, *labels).observe(elapsed)
        return {spec.name: value for spec, value in zip(graph.outputs, values, strict=True)}

    # -- metrics (no-ops without a Metrics object) -----------------------------------------------------------
    def set_queue_depth(self, graph: GraphSession, depth: int) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.queue_depth, graph.model, str(graph.version), graph.role).set(depth)

    def observe_queue_wait(self, graph: GraphSession, seconds: list[float]) -> None:
        if self._metrics is not None:
            histogram = self._metrics.child(self._metrics.queue_duration, graph.model, str(graph.version), graph.role)
            for value in seconds:
                histogram.observe(value)

    def count_rejected(self, graph: GraphSession, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.rejected, graph.model, str(graph.version), graph.role, reason).inc()

    # -- checks ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_inputs(graph: GraphSession, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        names = [spec.name for spec in graph.inputs]
        if sorted(feeds) != sorted(names):
            raise InvalidInput(f"{graph.label} takes inputs {names}, got {sorted(feeds)}")
        axes = _bind_axes(graph.inputs, feeds)
        for spec in graph.inputs:
            array = feeds[spec.name]
            if array.dtype != spec.numpy_dtype:
                raise InvalidInput(f"{graph.label} input {spec.name} must be {spec.dtype}, got {array.dtype}")
            problem = check_shape(spec, array.shape, axes)
            if problem:
                raise InvalidInput(f"{graph.label} input {spec.name}: {problem}", {"tensor": spec.name})
        return axes

    @staticmethod
    def _check_output_shapes(graph: GraphSession, outputs: Mapping[str, np.ndarray], axes: Mapping[str, int]) -> None:
        # A model that silently changes a size (e.g. a conv net on a side not divisible by its stride) must fail
        # loudly here rather than answer wrong numbers (or split a merged batch at the wrong rows).
        for spec in graph.outputs:
            problem = check_shape(spec, outputs[spec.name].shape, axes)
            if problem:
                raise InferenceError(
                    f"{graph.label} returned output {spec.name} with {problem}",
                    {"model": graph.model, "graph": graph.role, "output": spec.name},
                )

    @staticmethod
    def _check_finite(graph: GraphSession, outputs: Mapping[str, np.ndarray]) -> None:
        # Checked per caller after a merged batch is split: one caller's NaN must not fail the others.
        for spec in graph.outputs:
            value = outputs[spec.name]
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise InferenceError(
                    f"{graph.label} produced non-finite values in output {spec.name}",
                    {"model": graph.model, "graph": graph.role, "output": spec.name},
                )
