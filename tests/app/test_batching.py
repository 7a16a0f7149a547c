"""Dynamic batching, the bounded queue, deadlines and cancellation (`app/core/engine.py`), and metrics across workers.

The engine tests drive `InferenceEngine.run` in process on the real models with real ONNX Runtime; what depends on
the server (overload answers, deadlines over HTTP, health under load, several workers) runs against real uvicorn
processes on 127.0.0.1. Time bounds are generous (several times normal): the tight figures belong to `bench/`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.core.cards import ServingSection
from app.core.engine import (
    RELEASE_DELAY_SECONDS,
    SHRINK_ARENA_ABOVE_BYTES,
    BatchPolicy,
    GraphSession,
    InferenceEngine,
)
from app.core.errors import InferenceTimeout, Overloaded, PayloadTooLarge
from app.core.registry import ModelRegistry
from app.runtime.metrics import Metrics
from app.settings import Settings, usable_cpus
from tests.app.conftest import TOLERANCE, Reference, assert_error, load_npy, npy_bytes
from tests.app.live import running

ENGINE_MODELS = ("dense", "denoise", "lstm")


# -- in-process engine ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, GraphSession]:
    """Sessions of a few real models (loaded once), by `<model>.<graph>`; each test builds its own engine."""
    root = tmp_path_factory.mktemp("engine-models")
    for name in ENGINE_MODELS:
        (root / name).symlink_to(models_dir / name, target_is_directory=True)
    settings = Settings(models_dir=root, log_level="warning")
    registry = ModelRegistry(settings, InferenceEngine(None, settings))
    registry.load_all()
    assert registry.readiness().ready, registry.readiness().not_ready
    return {graph.label: graph for entry in registry.entries() for graph in entry.graphs.values()}


def make_engine(**knobs: Any) -> tuple[InferenceEngine, Metrics]:
    metrics = Metrics()
    return InferenceEngine(metrics, Settings(log_level="warning", **knobs)), metrics


def calls(metrics: Metrics, graph: GraphSession) -> tuple[int, int]:
    """(ONNX Runtime calls, rows) the engine recorded for `graph`."""
    count = rows = 0.0
    for family in metrics.batch_size.collect():
        for sample in family.samples:
            if sample.labels.get("model") != graph.model or sample.labels.get("graph") != graph.role:
                continue
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                rows += sample.value
    return int(count), int(rows)


def calls_up_to(metrics: Metrics, graph: GraphSession, rows: int) -> int:
    """ONNX Runtime calls of at most `rows` rows (a histogram bucket)."""
    value = metrics.registry.get_sample_value(
        "ae_inference_batch_size_bucket",
        {"model": graph.model, "version": "1", "graph": graph.role, "endpoint": "test", "le": f"{float(rows)}"},
    )
    return int(value or 0)


async def run_concurrently(
    engine: InferenceEngine, graph: GraphSession, arrays: list[np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """Every array as its own concurrent caller of `engine.run`; the engine is closed afterwards."""
    try:
        name = graph.inputs[0].name
        return await asyncio.gather(*(engine.run(graph, {name: a}, "test") for a in arrays))
    finally:
        await engine.aclose()


def batch_of(graph: GraphSession, rows: int, seed: int, **sizes: int) -> np.ndarray:
    spec = graph.inputs[0]
    shape = [rows, *(d if isinstance(d, int) else sizes[d] for d in spec.sample_shape)]
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=shape).astype(np.float32)


def assert_matches_reference(reference: Reference, graph: GraphSession, x: np.ndarray, got: dict[str, Any]) -> None:
    want = reference.run(graph.model, graph.role, x)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=TOLERANCE, rtol=0)


def test_concurrent_requests_merge_into_one_call_and_split_back_in_order(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["dense.encoder"]
    arrays = [batch_of(graph, rows, seed) for seed, rows in enumerate((1, 3, 1, 2, 5, 1, 1, 4))]
    engine, metrics = make_engine(inference_concurrency=1)
    merged = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (1, 18)  # eight callers, one ONNX Runtime call of 18 rows

    plain, plain_metrics = make_engine(batching=False, inference_concurrency=1)
    alone = asyncio.run(run_concurrently(plain, graph, arrays))
    assert calls(plain_metrics, graph) == (8, 18)

    for x, batched, unbatched in zip(arrays, merged, alone, strict=True):
        assert_matches_reference(reference, graph, x, batched)  # each caller gets its own rows, in order
        np.testing.assert_allclose(batched["z"], unbatched["z"], atol=TOLERANCE, rtol=0)


def test_merged_sequences_with_several_outputs_split_per_caller(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["lstm.full"]
    arrays = [batch_of(graph, rows, 10 + i, time=30) for i, rows in enumerate((2, 1, 3))]
    engine, metrics = make_engine(inference_concurrency=1)
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (1, 6)
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)


def test_batches_fill_up_to_the_row_limit_and_an_oversize_request_runs_alone(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["dense.encoder"]
    engine, metrics = make_engine(batch_max_rows=32, inference_concurrency=1)
    arrays = [batch_of(graph, 8, seed) for seed in range(10)]  # 80 rows: 32 + 32 + 16
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (3, 80)
    assert calls_up_to(metrics, graph, 16) == 1 and calls_up_to(metrics, graph, 32) == 3
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)

    engine, metrics = make_engine(batch_max_rows=64, inference_concurrency=1)
    arrays = [batch_of(graph, rows, 20 + i) for i, rows in enumerate((1, 2, 70, 3))]
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    # The 70-row request is neither split nor refused: it runs on its own; the others merge (6 rows).
    assert calls(metrics, graph) == (2, 76)
    assert calls_up_to(metrics, graph, 8) == 1 and calls_up_to(metrics, graph, 128) == 2
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)


def test_images_of_different_sizes_and_series_of_different_lengths_never_merge(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["denoise.full"]
    sides = (28, 32, 28, 32, 28)
    arrays = [batch_of(graph, 1, 30 + i, height=side, width=side) for i, side in enumerate(sides)]
    engine, metrics = make_engine(inference_concurrency=1)
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (2, 5)  # one call per size: 3 images of 28x28, 2 of 32x32
    assert calls_up_to(metrics, graph, 2) == 1 and calls_up_to(metrics, graph, 4) == 2
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)

    graph = graphs["lstm.encoder"]
    arrays = [batch_of(graph, 2, 40 + i, time=steps) for i, steps in enumerate((30, 40, 30, 40, 25))]
    engine, metrics = make_engine(inference_concurrency=1)
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (3, 10)
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)


def test_merged_images_stay_within_the_value_budget_and_a_big_one_runs_alone(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["denoise.full"]
    # 64x64 images are 4,096 values each: a budget of 10,000 values merges at most two of them per call.
    arrays = [batch_of(graph, 1, 60 + i, height=64, width=64) for i in range(5)]
    engine, metrics = make_engine(inference_concurrency=1, batch_max_values=10_000)
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (3, 5)  # 2 + 2 + 1, never 3 images (12,288 values) in one call
    assert calls_up_to(metrics, graph, 1) == 1 and calls_up_to(metrics, graph, 2) == 3
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)

    big = batch_of(graph, 1, 70, height=128, width=128)  # 16,384 values: above the budget, still served alone
    engine, metrics = make_engine(inference_concurrency=1, batch_max_values=10_000)
    (got,) = asyncio.run(run_concurrently(engine, graph, [big]))
    assert calls(metrics, graph) == (1, 1)
    assert_matches_reference(reference, graph, big, got)


def test_a_request_above_the_value_limit_is_refused_before_it_is_queued(graphs: dict[str, GraphSession]) -> None:
    graph = graphs["dense.encoder"]
    engine, metrics = make_engine(max_request_values=784 * 10)
    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(run_concurrently(engine, graph, [batch_of(graph, 11, 80)]))
    assert caught.value.status == 413 and "8624 input values" in caught.value.message
    assert calls(metrics, graph) == (0, 0)
    engine, metrics = make_engine(max_request_values=784 * 10)
    (got,) = asyncio.run(run_concurrently(engine, graph, [batch_of(graph, 10, 81)]))
    assert got["z"].shape[0] == 10 and calls(metrics, graph) == (1, 10)


def test_batching_off_never_merges(graphs: dict[str, GraphSession], reference: Reference) -> None:
    graph = graphs["dense.encoder"]
    arrays = [batch_of(graph, 1, 50 + i) for i in range(6)]
    engine, metrics = make_engine(batching=False, inference_concurrency=1, batch_max_delay_ms=50)
    results = asyncio.run(run_concurrently(engine, graph, arrays))
    assert calls(metrics, graph) == (6, 6) and calls_up_to(metrics, graph, 1) == 6
    for x, got in zip(arrays, results, strict=True):
        assert_matches_reference(reference, graph, x, got)


def test_a_full_queue_refuses_at_once_with_retry_after(graphs: dict[str, GraphSession]) -> None:
    graph = graphs["dense.encoder"]
    engine, metrics = make_engine(queue_max_requests=2, inference_concurrency=1)

    async def scenario() -> list[Any]:
        try:
            name = graph.inputs[0].name
            runs = [engine.run(graph, {name: batch_of(graph, 1, i)}, "test") for i in range(5)]
            return await asyncio.gather(*runs, return_exceptions=True)
        finally:
            await engine.aclose()

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(refused) == 3 and all(isinstance(o, dict) for o in outcomes[:2])
    assert refused[0].status == 503 and refused[0].headers["Retry-After"].isdigit()
    labels = {"model": graph.model, "version": "1", "graph": graph.role}
    assert metrics.registry.get_sample_value("ae_inference_rejected_total", {**labels, "reason": "queue_full"}) == 3
    assert metrics.registry.get_sample_value("ae_inference_queue_depth", labels) == 0


def test_a_cancelled_caller_leaves_the_queue_and_the_others_are_served(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["dense.encoder"]
    engine, metrics = make_engine(inference_concurrency=1, batch_max_delay_ms=200)
    arrays = [batch_of(graph, rows, 60 + rows) for rows in (1, 2, 4)]

    async def scenario() -> list[Any]:
        try:
            tasks = [asyncio.create_task(engine.run(graph, {"x": a}, "test")) for a in arrays]
            await asyncio.sleep(0.01)  # all three wait in the queue (the batch is held open for 200 ms)
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await engine.aclose()

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert calls(metrics, graph) == (1, 5)  # the cancelled caller's 2 rows never reached ONNX Runtime
    assert_matches_reference(reference, graph, arrays[0], outcomes[0])
    assert_matches_reference(reference, graph, arrays[2], outcomes[2])
    labels = {"model": graph.model, "version": "1", "graph": graph.role}
    assert metrics.registry.get_sample_value("ae_inference_rejected_total", {**labels, "reason": "cancelled"}) == 1
    assert metrics.registry.get_sample_value("ae_inference_queue_depth", labels) == 0


def test_requests_and_batches_are_freed_without_the_cycle_collector(graphs: dict[str, GraphSession]) -> None:
    """A finished batch leaves no reference cycle behind: left to the cyclic collector, the inputs of requests
    in flight during a collection (and the bodies they view) outlived them for minutes, ~100 MiB of RSS under
    64-row .npy load."""
    import gc

    from app.core.engine import _Batch, _Request

    graph = graphs["dense.encoder"]
    engine, _ = make_engine(inference_concurrency=1, batch_max_delay_ms=50)
    arrays = [batch_of(graph, rows, 80 + rows) for rows in (1, 2, 3, 4)]

    def in_cycles() -> list[str]:
        gc.collect()
        try:
            return [type(o).__name__ for o in gc.garbage if isinstance(o, (_Request, _Batch))]
        finally:
            gc.garbage.clear()

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            tasks = [asyncio.create_task(engine.run(graph, {"x": a}, "test")) for a in arrays]
            await asyncio.sleep(0.01)
            tasks[1].cancel()  # one caller leaves while queued; the other three are served in one batch
            await asyncio.gather(*tasks, return_exceptions=True)
            after_cancel = in_cycles()
            await asyncio.gather(*(engine.run(graph, {"x": a}, "test") for a in arrays))  # four merged
            return after_cancel, in_cycles()
        finally:
            await engine.aclose()

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable is kept in gc.garbage, not freed
    try:
        after_cancel, after_merged = asyncio.run(scenario())
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert after_cancel == [] and after_merged == []


def with_serving(graph: GraphSession, **knobs: Any) -> GraphSession:
    """The same session with a card `serving` section."""
    return GraphSession(graph.model, graph.role, graph.card, graph.session, ServingSection(**knobs))


def test_a_deadline_in_the_queue_answers_inference_timeout_and_frees_its_place(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    """The only slot is busy with a long call: a waiting request times out at its deadline and leaves the queue."""
    big = graphs["denoise.full"]
    small = with_serving(graphs["dense.encoder"], inference_timeout_seconds=0.05, queue_max_requests=1)
    engine, metrics = make_engine(inference_concurrency=1)
    long_call = batch_of(big, 1, 70, height=384, width=384)  # about 0.5 s on one thread here
    x = batch_of(small, 1, 71)

    async def scenario() -> tuple[Any, Any, bool]:
        try:
            hog = asyncio.create_task(engine.run(big, {big.inputs[0].name: long_call}, "test"))
            await asyncio.sleep(0.01)  # the long call holds the only slot
            waiting = await asyncio.gather(engine.run(small, {"x": x}, "test"), return_exceptions=True)
            hog_running = not hog.done()  # answered at its deadline, not when the long call ended
            await hog
            after = await engine.run(small, {"x": x}, "test")  # its queue place was freed (the bound is 1)
            return waiting[0], after, hog_running
        finally:
            await engine.aclose()

    timed_out, after, hog_running = asyncio.run(scenario())
    assert isinstance(timed_out, InferenceTimeout) and timed_out.status == 504, timed_out
    assert hog_running
    assert_matches_reference(reference, small, x, after)
    labels = {"model": small.model, "version": "1", "graph": small.role}
    assert metrics.registry.get_sample_value("ae_inference_rejected_total", {**labels, "reason": "timeout"}) == 1
    assert metrics.registry.get_sample_value("ae_inference_queue_depth", labels) == 0
    assert calls(metrics, small) == (1, 1)  # the timed-out request never reached ONNX Runtime


def test_a_running_call_whose_callers_all_left_is_stopped(graphs: dict[str, GraphSession]) -> None:
    big = with_serving(graphs["denoise.full"], inference_timeout_seconds=0.05)
    small = graphs["dense.encoder"]
    engine, metrics = make_engine(inference_concurrency=1)
    long_call = batch_of(big, 1, 72, height=512, width=512)  # over a second on one thread here

    async def scenario() -> tuple[Any, float]:
        try:
            outcome = await asyncio.gather(engine.run(big, {"x": long_call}, "test"), return_exceptions=True)
            started = time.perf_counter()
            await engine.run(small, {"x": batch_of(small, 1, 73)}, "test")  # waits for the only slot
            return outcome[0], time.perf_counter() - started
        finally:
            await engine.aclose()

    timed_out, waited = asyncio.run(scenario())
    assert isinstance(timed_out, InferenceTimeout)
    # ONNX Runtime stopped the abandoned call (RunOptions.terminate): it never completed, and the slot came back.
    assert calls(metrics, big) == (0, 0)
    assert waited < 30


def test_serving_knobs_come_from_the_card_unless_the_environment_sets_them(
    graphs: dict[str, GraphSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = graphs["dense.encoder"]
    carded = GraphSession(
        graph.model, graph.role, graph.card, graph.session, ServingSection(batch_max_rows=8, queue_max_requests=3)
    )
    defaults = Settings(log_level="warning")
    policy = BatchPolicy.resolve(defaults, carded)
    assert (policy.max_rows, policy.queue_max_requests) == (8, 3)
    assert policy.timeout_seconds == defaults.inference_timeout_seconds and policy.batching
    monkeypatch.setenv("AE_BATCH_MAX_ROWS", "16")
    policy = BatchPolicy.resolve(Settings(log_level="warning"), carded)
    assert (policy.max_rows, policy.queue_max_requests) == (16, 3)  # the environment wins over the card
    assert not BatchPolicy.resolve(Settings(log_level="warning", batching=False), carded).batching


def test_onnx_threads_do_not_oversubscribe_the_usable_cpus() -> None:
    cpus = usable_cpus()
    assert Settings(log_level="warning", workers=0).workers == cpus  # 0: one worker per usable CPU
    for workers in (1, 2, 4):
        settings = Settings(log_level="warning", workers=workers)
        busy = workers * settings.ort_concurrency() * settings.ort_intra_op_threads()
        assert busy <= max(cpus, workers), (workers, busy, cpus)


def test_a_lone_call_gets_every_cpu_of_its_worker_and_overlapping_calls_do_not() -> None:
    cpus = usable_cpus()
    settings = Settings(log_level="warning", workers=1)
    # The ordinary sessions share the CPUs between the calls in flight; a lone call may use them all.
    assert settings.ort_lone_threads() == (cpus if cpus > settings.ort_intra_op_threads() else 0)
    assert Settings(log_level="warning", lone_intra_op_threads=1).ort_lone_threads() == 0  # 1: off
    assert Settings(log_level="warning", intra_op_threads=cpus).ort_lone_threads() == 0  # nothing to gain
    assert Settings(log_level="warning", workers=cpus).ort_lone_threads() == 0  # one CPU per worker already


def test_model_detail_reports_each_graphs_threads(client: Any) -> None:
    lone = Settings(log_level="warning").ort_lone_threads() or None
    photo = client.get("/v1/models/photo").json()["graphs"]["full"]
    assert photo["intra_op_threads"] == Settings(log_level="warning").ort_intra_op_threads()
    assert photo["lone_intra_op_threads"] == lone
    dense = client.get("/v1/models/dense").json()["graphs"]["encoder"]
    assert dense["intra_op_threads"] >= 1 and dense["lone_intra_op_threads"] is None


def test_large_lone_calls_take_the_lone_session_with_the_same_answers(
    graphs: dict[str, GraphSession], reference: Reference
) -> None:
    graph = graphs["denoise.full"]
    if Settings(log_level="warning").ort_lone_threads() == 0:
        pytest.skip("one usable CPU: no lone-call sessions")
    assert graph.lone_session is not None
    assert graph.lone_session.get_session_options().intra_op_num_threads == usable_cpus()
    assert graph.session.get_session_options().intra_op_num_threads < usable_cpus()
    assert graphs["dense.full"].lone_session is None  # vectors: calls too small for threads to pay

    engine, _ = make_engine(batching=False, inference_concurrency=2)
    big = batch_of(graph, 1, seed=1, height=128, width=128)  # 16 Ki values: the default lone_min_values
    small = batch_of(graph, 1, seed=2, height=64, width=64)
    (alone,) = asyncio.run(run_concurrently(engine, graph, [big]))
    assert engine.lone_calls == 1
    assert_matches_reference(reference, graph, big, alone)

    engine, _ = make_engine(batching=False, inference_concurrency=2)
    (little,) = asyncio.run(run_concurrently(engine, graph, [small]))
    assert engine.lone_calls == 0  # below lone_min_values
    assert_matches_reference(reference, graph, small, little)

    # Two at once: the first starts alone and takes the lone session, the second starts while it runs and
    # takes the ordinary one; both answers equal ONNX Runtime's.
    engine, _ = make_engine(batching=False, inference_concurrency=2)
    other = batch_of(graph, 1, seed=3, height=128, width=128)
    first, second = asyncio.run(run_concurrently(engine, graph, [big, other]))
    assert engine.lone_calls == 1 and engine.calls_in_flight == 0
    assert_matches_reference(reference, graph, big, first)
    assert_matches_reference(reference, graph, other, second)


def test_a_release_run_follows_large_calls_once_the_graph_is_idle(graphs: dict[str, GraphSession]) -> None:
    """A call above SHRINK_ARENA_ABOVE_BYTES marks its session; once the graph has been idle for
    RELEASE_DELAY_SECONDS one release run (the warm-up sample, arena shrinkage on) follows. Calls back to back (a
    tiled image's tiles) get one release at the end, not one each; small calls get none. The memory it gives back
    is measured in tests/app/test_memory.py."""
    graph = graphs["denoise.full"]
    assert graph.release_feeds is not None
    large = dataclasses.replace(graph, work_bytes_per_value=SHRINK_ARENA_ABOVE_BYTES)  # any call counts as large
    x = batch_of(graph, 1, seed=4, height=64, width=64)

    async def scenario(g: GraphSession, calls: int, pause: float) -> InferenceEngine:
        engine, _ = make_engine(batching=False)
        try:
            for _ in range(calls):
                await engine.run(g, {g.inputs[0].name: x}, "test")
            await asyncio.sleep(pause)
            return engine
        finally:
            await engine.aclose()

    assert asyncio.run(scenario(large, 1, 0.0)).arena_releases == 0  # not yet: the graph may be busy again soon
    assert asyncio.run(scenario(large, 1, RELEASE_DELAY_SECONDS * 6)).arena_releases == 1
    assert asyncio.run(scenario(large, 5, RELEASE_DELAY_SECONDS * 6)).arena_releases == 1
    assert asyncio.run(scenario(graph, 3, RELEASE_DELAY_SECONDS * 6)).arena_releases == 0
    without = dataclasses.replace(large, release_feeds=None)
    assert asyncio.run(scenario(without, 2, RELEASE_DELAY_SECONDS * 6)).arena_releases == 0
    engine, _ = make_engine(cpu_mem_arena=False)  # no arena: nothing to give back
    engine.release_arena(large, [False])
    assert engine.arena_releases == 0


# -- real uvicorn -----------------------------------------------------------------------------------------------
def copy_model(models_dir: Path, root: Path, name: str, as_name: str | None = None, **serving: Any) -> None:
    """A copy of a real model, optionally renamed, with a `serving` section in its card."""
    target = root / (as_name or name)
    shutil.copytree(models_dir / name, target)
    card = json.loads((target / "card.json").read_text())
    card["name"] = as_name or name
    if serving:
        card["serving"] = serving
    (target / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[str]:
    """Per-model knobs from the cards: dense holds batches open 20 ms, denoise queues at most 4 requests,
    `denoise-deadline` (a renamed copy of denoise) gives up after 0.3 s."""
    root = tmp_path_factory.mktemp("batching-models")
    copy_model(models_dir, root, "dense", batch_max_delay_ms=20)
    copy_model(models_dir, root, "denoise", queue_max_requests=4)
    copy_model(models_dir, root, "denoise", "denoise-deadline", inference_timeout_seconds=0.3, batching=False)
    with running(root, tmp_path_factory.mktemp("batching-log") / "server.log", {"AE_LOG_LEVEL": "warning"}) as live:
        yield live.base


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent); a model's samples are those of its
    version 1 unless `version` says otherwise."""
    if "model" in labels:
        labels.setdefault("version", "1")
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_concurrent_http_requests_merge_and_each_gets_its_own_answer(server: str, reference: Reference) -> None:
    rng = np.random.default_rng(80)
    inputs = [rng.uniform(0, 1, size=(1, 784)).astype(np.float32) for _ in range(16)]
    before = httpx.get(f"{server}/metrics").text

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            posts = (client.post("/v1/models/dense/encode", json={"inputs": x.tolist()}) for x in inputs)
            return await asyncio.gather(*posts)

    responses = asyncio.run(send_all())
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        want = reference.run("dense", "encoder", x)["z"]
        np.testing.assert_allclose(np.asarray(response.json()["latent"]), want, atol=TOLERANCE, rtol=0)
    after = httpx.get(f"{server}/metrics").text
    labels = {"endpoint": "encode", "graph": "encoder", "model": "dense", "version": "1"}
    count = metric(after, "ae_inference_batch_size_count", **labels) - metric(
        before, "ae_inference_batch_size_count", **labels
    )
    rows = metric(after, "ae_inference_batch_size_sum", **labels) - metric(
        before, "ae_inference_batch_size_sum", **labels
    )
    assert rows == 16 and count < 16, (count, rows)  # more than one row per ONNX Runtime call on average
    assert metric(after, "ae_inference_queue_duration_seconds_count", graph="encoder", model="dense") >= 16


def test_overload_answers_503_with_retry_after_keeps_health_fast_and_recovers(server: str) -> None:
    """A fixed number of 128x128 denoise requests (~35 ms each here) from 24 clients against a queue bound of 4."""
    image = npy_bytes(np.random.default_rng(90).uniform(0, 1, size=(1, 1, 128, 128)).astype(np.float32))
    headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
    total, clients = 240, 24

    async def load() -> list[tuple[int, float, httpx.Response]]:
        results: list[tuple[int, float, httpx.Response]] = []
        remaining = total
        async with httpx.AsyncClient(base_url=server, timeout=60, limits=httpx.Limits(max_connections=clients)) as c:

            async def client() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    started = time.perf_counter()
                    response = await c.post("/v1/models/denoise/denoise", content=image, headers=headers)
                    results.append((response.status_code, time.perf_counter() - started, response))
                    if response.status_code == 503:
                        await asyncio.sleep(0.05)  # a short backoff (a real client waits Retry-After)

            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=120)
        return results

    health: list[float] = []
    loaded = threading.Event()

    def probe() -> None:  # its own thread and connection, so the load's event loop does not delay it
        with httpx.Client(base_url=server, timeout=30) as c:
            while not loaded.is_set():
                started = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                health.append(time.perf_counter() - started)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    try:
        results = asyncio.run(load())
    finally:
        loaded.set()
        prober.join()
    elapsed = time.perf_counter() - started
    statuses = [status for status, _, _ in results]
    assert len(results) == total and set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) > 0 and statuses.count(503) > 0, (statuses.count(200), statuses.count(503))
    refused = next(response for status, _, response in results if status == 503)
    error = assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"].isdigit()
    assert error["details"]["queue_max_requests"] == 4
    admitted = sorted(seconds for status, seconds, _ in results if status == 200)
    p99 = admitted[min(len(admitted) - 1, int(0.99 * len(admitted)))]
    print(f"admitted p99 {p99:.3f} s, slowest /healthz {max(health):.3f} s, {statuses.count(503)}/{total} refused")
    # Generous bounds (a few tenths of a second is normal here; the machine is shared): the queue bound keeps
    # the wait of admitted requests short, and the event loop answers health while ONNX Runtime is saturated.
    assert p99 < 8.0, f"p99 of admitted requests {p99:.3f} s"
    assert len(health) >= 3 and max(health) < 2.0, f"slowest /healthz under load {max(health):.3f} s"
    assert elapsed < 120
    # Recovery: the queue drained, the next request is served, and the refusals were counted.
    response = httpx.post(f"{server}/v1/models/denoise/denoise", content=image, headers=headers, timeout=30)
    assert response.status_code == 200
    text = httpx.get(f"{server}/metrics").text
    assert metric(text, "ae_inference_rejected_total", graph="full", model="denoise", reason="queue_full") >= 1
    assert metric(text, "ae_inference_queue_depth", graph="full", model="denoise") == 0


def test_a_request_past_its_deadline_gets_504_and_the_next_one_succeeds(server: str, reference: Reference) -> None:
    headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
    huge = np.random.default_rng(100).uniform(0, 1, size=(1, 1, 1024, 1024)).astype(np.float32)
    started = time.perf_counter()
    response = httpx.post(
        f"{server}/v1/models/denoise-deadline/denoise", content=npy_bytes(huge), headers=headers, timeout=60
    )
    waited = time.perf_counter() - started
    error = assert_error(response, 504, "inference_timeout")
    assert error["details"]["timeout_seconds"] == 0.3
    assert waited < 5.0
    small = np.random.default_rng(101).uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32)
    response = httpx.post(
        f"{server}/v1/models/denoise-deadline/denoise", content=npy_bytes(small), headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    want = reference.run("denoise", "full", small)["denoised"]
    np.testing.assert_allclose(load_npy(response.content), want, atol=TOLERANCE, rtol=0)
    text = httpx.get(f"{server}/metrics").text
    # The 1024 x 1024 image runs in tiles, one per call, as many calls in flight as the engine runs at once (2 on
    # this 2-CPU machine): each call that was in flight when the deadline passed counts one timeout, and no tile
    # is started after the first one failed.
    timeouts = metric(text, "ae_inference_rejected_total", graph="full", model="denoise-deadline", reason="timeout")
    assert 1 <= timeouts <= 2


def test_a_client_that_disconnects_during_inference_stops_its_request(server: str) -> None:
    """The client sends a long denoise request and hangs up: the request is cancelled (not computed to the end)."""
    labels = {"graph": "full", "model": "denoise-deadline", "version": "1"}
    counts = {"endpoint": "denoise", **labels}
    before = httpx.get(f"{server}/metrics").text
    body = npy_bytes(np.random.default_rng(110).uniform(0, 1, size=(1, 1, 1024, 1024)).astype(np.float32))
    port = int(server.rsplit(":", 1)[1])
    head = (
        "POST /v1/models/denoise-deadline/denoise HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-npy\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.1)  # the request is being computed (a second or more here); the client goes away
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(f"{server}/metrics").text
        cancelled = metric(text, "ae_inference_rejected_total", reason="cancelled", **labels)
        if cancelled >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # The image runs in tiles, one per call, up to two calls in flight on this 2-CPU machine: each is cancelled.
    assert 1 <= cancelled - metric(before, "ae_inference_rejected_total", reason="cancelled", **labels) <= 2
    # The abandoned calls were stopped rather than completed, and the request is counted as 499.
    assert metric(text, "ae_inference_batch_size_count", **counts) == metric(
        before, "ae_inference_batch_size_count", **counts
    )
    route = {"method": "POST", "model": "denoise-deadline", "route": "/v1/models/{name}/denoise", "status": "499"}
    assert metric(text, "ae_http_requests_total", **route) >= 1
    small = npy_bytes(np.random.default_rng(111).uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32))
    headers = {"content-type": "application/x-npy"}
    # ONNX Runtime stops a terminated call at its next node: a 1024x1024 conv node can outlast this model's 0.3 s
    # deadline on a busy machine, so the graph frees up within seconds rather than at once.
    deadline = time.monotonic() + 15
    while True:
        url = f"{server}/v1/models/denoise-deadline/denoise"
        response = httpx.post(url, content=small, headers=headers, timeout=30)
        if response.status_code != 504 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text


def worker_pids(parent: int) -> list[int]:
    path = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def multiproc_dir_of(pid: int) -> Path | None:
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    return None


def test_two_workers_aggregate_their_metrics(tmp_path: Path, models_dir: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "dense").symlink_to(models_dir / "dense", target_is_directory=True)
    x = {"inputs": [[0.5] * 784]}
    with running(root, tmp_path / "server.log", {"AE_LOG_LEVEL": "warning"}, args=("--workers", "2")) as live:
        base = live.base
        children = worker_pids(live.process.pid)
        dirs = {multiproc_dir_of(pid) for pid in children}
        assert len(dirs) == 1 and None not in dirs, dirs  # one temporary directory shared by the workers
        shared: Path = dirs.pop()  # type: ignore[assignment]
        sent = 0

        async def burst() -> None:
            nonlocal sent
            # Fresh connections in parallel so that both workers accept some of them.
            async with httpx.AsyncClient(
                base_url=base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
            ) as c:
                responses = await asyncio.gather(*(c.post("/v1/models/dense/encode", json=x) for _ in range(24)))
            assert all(r.status_code == 200 for r in responses)
            sent += len(responses)

        def served_by() -> set[str]:
            return {path.stem.split("_")[-1] for path in shared.glob("counter_*.db")}

        deadline = time.monotonic() + 20
        while True:
            asyncio.run(burst())
            if len(served_by()) >= 2 or time.monotonic() > deadline:
                break
        assert len(served_by()) >= 2, "every request went to one worker"
        for _ in range(4):  # whichever worker answers /metrics reports the sum over both
            text = httpx.get(f"{base}/metrics").text
            route = {"method": "POST", "model": "dense", "route": "/v1/models/{name}/encode", "status": "200"}
            assert metric(text, "ae_http_requests_total", **route) == sent
            assert (
                metric(text, "ae_inference_batch_size_sum", endpoint="encode", graph="encoder", model="dense") == sent
            )
            assert metric(text, "ae_model_ready", model="dense") == 1
    assert not shared.exists(), "the temporary metrics directory was left behind"
