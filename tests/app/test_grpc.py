"""Triton's gRPC inference service through the unmodified `tritonclient.grpc` (sync, aio and the stream API)
against a real `python -m app` process serving HTTP and gRPC from the same registry, engine and batcher.

Answers are compared with ONNX Runtime on the committed files and with `/v1`; errors are gRPC status codes with
our message; hostile clients (wrong datatypes, raw bytes that disagree with the shape, oversize messages, cancelled
and idle streams) leave the server serving."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tg_aio
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.app.conftest import CARDS, REPO, TOLERANCE, Reference
from tests.app.live import LiveServer, free_port, running
from tests.app.test_v2_triton import (
    SIGMA,
    V1_TASKS,
    V2_MODELS,
    extra_inputs,
    graph_input,
    input_name,
    output_names,
)

API_KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}
MAX_MESSAGE = 4 * 1024 * 1024
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    grpc_port = free_port()
    env = {"AE_API_KEY": API_KEY, "AE_GRPC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    with running(models_dir, log, env, args=["--grpc-port", str(grpc_port)]) as server:
        server.grpc_port = grpc_port  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def target(live: LiveServer) -> str:
    return f"127.0.0.1:{live.grpc_port}"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(target: str) -> Iterator[Any]:
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_input(name: str, x: np.ndarray) -> tg.InferInput:
    tensor = tg.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def assert_serving(live: LiveServer, client: tg.InferenceServerClient) -> None:
    """The process still answers HTTP and a gRPC inference."""
    assert httpx.get(f"{live.base}/healthz", timeout=10).status_code == 200
    x = np.full((1, 784), 0.5, dtype=np.float32)
    result = client.infer("dense.encoder", [infer_input("x", x)], headers=AUTH, client_timeout=30)
    assert result.as_numpy("z").shape == (1, 32)


def metric_total(live: LiveServer, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    text = httpx.get(f"{live.base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{want}"' in head for key, want in labels.items()):
            total += float(value)
    return total


# -- health, metadata, config --------------------------------------------------------------------------------
def test_health_metadata_and_config_match_http(client: tg.InferenceServerClient, live: LiveServer) -> None:
    # ServerLive / ServerReady are exempt from the key as /v2/health/live and /ready are (AE_API_KEY_EXEMPT_PATHS)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("dense.encoder", headers=AUTH)
    assert client.is_model_ready("dense", model_version="1", headers=AUTH)
    http = httpx.Client(base_url=live.base, headers=AUTH, timeout=30)
    metadata = client.get_server_metadata(headers=AUTH, as_json=True)
    assert metadata == http.get("/v2").json()
    for name in ("dense.encoder", "dense", "conv.decoder", "photo.full"):
        got = client.get_model_metadata(name, headers=AUTH, as_json=True)
        want = http.get(f"/v2/models/{name}").json()
        assert {k: got[k] for k in ("name", "versions", "platform")} == {
            k: want[k] for k in ("name", "versions", "platform")
        }
        for side in ("inputs", "outputs"):
            assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in got[side]] == [
                (t["name"], t["datatype"], t["shape"]) for t in want[side]
            ]
        config = client.get_model_config(name, headers=AUTH).config
        want_config = http.get(f"/v2/models/{name}/config").json()
        assert config.name == want_config["name"] and config.max_batch_size == want_config["max_batch_size"]
        assert config.platform == "onnxruntime_onnx"
        assert [(t.name, list(t.dims)) for t in config.input] == [(t["name"], t["dims"]) for t in want_config["input"]]
        assert [model_type(t.data_type) for t in config.output] == [t["data_type"] for t in want_config["output"]]


def model_type(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(value))


def test_standard_health_service_and_reflection(target: str, live: LiveServer) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):  # no key needed: probes
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(reflect.ServerReflectionInfo(iter([request]), metadata=tuple(AUTH.items()), timeout=10))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names


# -- inference -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("v2_name", "model", "role"), [pytest.param(*m, id=m[0]) for m in V2_MODELS])
def test_infer_raw_matches_onnx_runtime_and_v1(
    client: tg.InferenceServerClient, live: LiveServer, reference: Reference, v2_name: str, model: str, role: str
) -> None:
    """tritonclient sends raw_input_contents; the answer's raw_output_contents equal ONNX Runtime and /v1."""
    x = graph_input(model, role, batch=2, seed=3)
    extra = extra_inputs(model, role, len(x))
    tensors = [infer_input(input_name(model, role), x)] + [infer_input(n, v) for n, v in extra.items()]
    result = client.infer(v2_name, tensors, request_id=f"r-{v2_name}", headers=AUTH, client_timeout=60)
    response = result.get_response()
    assert response.id == f"r-{v2_name}" and response.model_name == v2_name and response.model_version == "1"
    want = reference.run(model, role, x, **extra)
    got = {name: result.as_numpy(name) for name in output_names(model, role)}
    for name, value in got.items():
        assert value is not None and value.dtype == np.float32
        np.testing.assert_allclose(value, want[name], rtol=0, atol=TOLERANCE)
    task, fields = V1_TASKS.get(role, ("reconstruct", ["reconstruction", "scores"]))
    if task not in CARDS[model]["tasks"]:
        return
    query = f"?sigma={SIGMA * 255:g}" if extra else ""
    v1 = httpx.post(
        f"{live.base}/v1/models/{model}/{task}{query}", json={"inputs": x.tolist()}, headers=AUTH, timeout=60
    )
    assert v1.status_code == 200, v1.text
    for name, field in zip(output_names(model, role), fields, strict=True):
        v1_value = np.asarray(v1.json()[field], dtype=np.float32).reshape(want[name].shape)
        np.testing.assert_allclose(got[name], v1_value, rtol=0, atol=TOLERANCE)


def test_infer_typed_contents_and_output_selection(stub: Any, reference: Reference) -> None:
    """Typed `fp32_contents` in (KServe's grpc_predict_v2 style), one of two outputs asked for, raw out; the
    request id comes back in the initial metadata."""
    x = graph_input("dense", "full", batch=3, seed=4)
    request = pb.ModelInferRequest(model_name="dense", id="typed-1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.outputs.add(name="score")
    metadata = (*AUTH.items(), ("x-request-id", "my-request-7"))
    response, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=30)
    assert dict(call.initial_metadata())["x-request-id"] == "my-request-7"
    assert response.id == "typed-1" and [o.name for o in response.outputs] == ["score"]
    score = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(score, reference.run("dense", "full", x)["score"], rtol=0, atol=TOLERANCE)
    # a fresh id when the client sends none (or an insane one)
    _, call = stub.ModelInfer.with_call(request, metadata=(*AUTH.items(), ("x-request-id", "bad id!")), timeout=30)
    fresh = dict(call.initial_metadata())["x-request-id"]
    assert fresh != "bad id!" and len(fresh) == 32


def test_aio_client(target: str, reference: Reference) -> None:
    x = graph_input("dense", "encoder", batch=5, seed=5)

    async def run() -> tuple[np.ndarray, bool]:
        async with tg_aio.InferenceServerClient(target) as client:
            ready = await client.is_model_ready("dense.encoder", headers=AUTH)
            tensor = tg_aio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            results = await asyncio.gather(
                *(client.infer("dense.encoder", [tensor], headers=AUTH, client_timeout=30) for _ in range(8))
            )
            return np.stack([r.as_numpy("z") for r in results]), ready

    codes, ready = asyncio.run(run())
    assert ready
    want = reference.run("dense", "encoder", x)["z"]
    for z in codes:
        np.testing.assert_allclose(z, want, rtol=0, atol=TOLERANCE)


def test_stream_answers_in_order_with_ids_and_errors(client: tg.InferenceServerClient, reference: Reference) -> None:
    """Many requests on one stream, one of them bad: every answer comes back, in order, each with its id; the
    bad one as an error message naming the tensor, and the stream goes on."""
    answers: list[tuple[Any, Any]] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)), headers=AUTH)
    inputs = [graph_input("dense", "encoder", batch=1 + i % 4, seed=i) for i in range(24)]
    try:
        for i, x in enumerate(inputs):
            if i == 10:
                bad = tg.InferInput("x", list(x.shape), "FP64")
                bad.set_data_from_numpy(x.astype(np.float64))
                client.async_stream_infer("dense.encoder", [bad], request_id=f"s-{i}")
            else:
                client.async_stream_infer("dense.encoder", [infer_input("x", x)], request_id=f"s-{i}")
        deadline = time.monotonic() + 60
        while len(answers) < len(inputs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.stop_stream()
    assert len(answers) == len(inputs)
    ok = [(i, result) for i, (result, error) in enumerate(answers) if error is None]
    errors = [error for result, error in answers if error is not None]
    assert len(errors) == 1 and "FP64" in errors[0].message() and "'x'" in errors[0].message()
    assert [result.get_response().id for _, result in ok] == [f"s-{i}" for i in range(24) if i != 10]
    for (_, result), i in zip(ok, [i for i in range(24) if i != 10], strict=True):
        np.testing.assert_allclose(
            result.as_numpy("z"), reference.run("dense", "encoder", inputs[i])["z"], rtol=0, atol=TOLERANCE
        )


def test_statistics_count_grpc_requests(client: tg.InferenceServerClient) -> None:
    def successes() -> int:
        stats = client.get_inference_statistics("dense.decoder", headers=AUTH).model_stats
        assert [s.name for s in stats] == ["dense.decoder"]
        return int(stats[0].inference_stats.success.count)

    before = successes()
    z = graph_input("dense", "decoder", batch=2)
    for _ in range(3):
        client.infer("dense.decoder", [infer_input("z", z)], headers=AUTH)
    assert successes() == before + 3
    every = client.get_inference_statistics(headers=AUTH).model_stats
    assert {"dense", "dense.encoder", "photo.full"} <= {s.name for s in every}


def test_metrics_count_grpc_requests_with_the_http_labels(client: tg.InferenceServerClient, live: LiveServer) -> None:
    route = f"/{SERVICE}/ModelInfer"
    before = metric_total(live, "ae_http_requests_total", method="GRPC", route=route, model="dense", status="200")
    assert_serving(live, client)
    after = metric_total(live, "ae_http_requests_total", method="GRPC", route=route, model="dense", status="200")
    assert after == before + 1
    assert metric_total(live, "ae_inference_batch_size_count", model="dense", graph="encoder", endpoint="grpc") >= 1


# -- errors --------------------------------------------------------------------------------------------------
def test_wrong_datatype_shape_values_and_unknown_model(client: tg.InferenceServerClient, live: LiveServer) -> None:
    x = graph_input("dense", "encoder", batch=2)
    wrong = tg.InferInput("x", list(x.shape), "FP64")
    wrong.set_data_from_numpy(x.astype(np.float64))
    error = grpc_error(lambda: client.infer("dense.encoder", [wrong], headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x'" in error.message() and "FP64" in error.message() and "FP32" in error.message()

    narrow = np.zeros((2, 700), dtype=np.float32)
    error = grpc_error(lambda: client.infer("dense.encoder", [infer_input("x", narrow)], headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "input 'x'" in error.message()
    assert "[2, 700]" in error.message()

    out_of_range = np.full((1, 784), 7.0, dtype=np.float32)
    error = grpc_error(lambda: client.infer("dense.encoder", [infer_input("x", out_of_range)], headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "x" in error.message()

    error = grpc_error(lambda: client.infer("nope.encoder", [infer_input("x", x)], headers=AUTH))
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope.encoder'" in error.message()
    error = grpc_error(lambda: client.infer("dense", [infer_input("x", x)], model_version="9", headers=AUTH))
    assert error.status() == "StatusCode.NOT_FOUND"
    error = grpc_error(lambda: client.get_model_metadata("nope", headers=AUTH))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert_serving(live, client)


def test_raw_contents_that_disagree_with_the_shape(
    stub: Any, live: LiveServer, client: tg.InferenceServerClient
) -> None:
    def request(raw: list[bytes], shape: list[int], typed: int = 0) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="dense.encoder")
        tensor = message.inputs.add(name="x", datatype="FP32", shape=shape)
        tensor.contents.fp32_contents.extend([0.5] * typed)
        message.raw_input_contents.extend(raw)
        return message

    cases = {
        "short": (request([b"\0" * (784 * 4 - 4)], [1, 784]), "raw_input_contents[0] holds 3132 bytes"),
        "long": (request([b"\0" * (784 * 4 * 3)], [2, 784]), "takes 6272"),
        "two raw for one input": (request([b"\0" * 3136, b"\0" * 3136], [1, 784]), "holds 2 tensors"),
        "typed count": (request([], [1, 784], typed=10), "holds 10 values"),
        "both": (request([b"\0" * 3136], [1, 784], typed=784), "both contents and raw_input_contents"),
        "no data": (request([], [1, 784]), "has no data"),
    }
    for case, (message, words) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(message, metadata=tuple(AUTH.items()), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert "input 'x'" in caught.value.details() or case == "two raw for one input", caught.value.details()
        assert words in caught.value.details(), (case, caught.value.details())
    assert_serving(live, client)


def test_oversize_message_is_resource_exhausted(client: tg.InferenceServerClient, live: LiveServer) -> None:
    rows = MAX_MESSAGE // (784 * 4) + 8
    x = np.zeros((rows, 784), dtype=np.float32)
    error = grpc_error(lambda: client.infer("dense.encoder", [infer_input("x", x)], headers=AUTH))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "larger than max" in error.message() and str(MAX_MESSAGE) in error.message()
    assert_serving(live, client)


def test_api_key(stub: Any, client: tg.InferenceServerClient, live: LiveServer) -> None:
    route = f"/{SERVICE}/ModelMetadata"
    before = metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="401")
    request = pb.ModelMetadataRequest(name="dense")
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", API_KEY),)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(request, metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <key>" in caught.value.details()
    assert stub.ModelMetadata(request, metadata=tuple(AUTH.items()), timeout=10).name == "dense"
    assert metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="401") == before + 3


def test_extensions_not_offered_and_repository(client: tg.InferenceServerClient) -> None:
    error = grpc_error(lambda: client.get_system_shared_memory_status(headers=AUTH))
    assert error.status() == "StatusCode.UNIMPLEMENTED" and "shared-memory" in error.message()
    index = client.get_model_repository_index(headers=AUTH)
    assert ("dense", "1", "READY") in {(m.name, m.version, m.state) for m in index.models}
    # AE_MODEL_CONTROL=none (the default): load and unload are refused, saying why
    error = grpc_error(lambda: client.load_model("dense", headers=AUTH))
    assert error.status() == "StatusCode.PERMISSION_DENIED" and "AE_MODEL_CONTROL" in error.message()
    error = grpc_error(lambda: client.unload_model("dense", headers=AUTH))
    assert error.status() == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("dense", headers=AUTH)


# -- deadlines and hostile streams ---------------------------------------------------------------------------
def test_client_deadline_cancels_the_work(client: tg.InferenceServerClient, live: LiveServer) -> None:
    """A deadline shorter than the inference: DEADLINE_EXCEEDED for the client, and the server's handler is
    cancelled (counted as 504 `deadline_exceeded`), its request out of the engine's queue."""
    route = f"/{SERVICE}/ModelInfer"
    before = metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="504")
    image = np.random.default_rng(0).uniform(0, 1, size=(1, 3, 560, 560)).astype(np.float32)
    sigma = np.full(1, SIGMA, dtype=np.float32)
    tensors = [infer_input(input_name("photo", "full"), image), infer_input("sigma", sigma)]
    error = grpc_error(lambda: client.infer("photo.full", tensors, headers=AUTH, client_timeout=0.05))
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    deadline = time.monotonic() + 30
    while metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="504") <= before:
        assert time.monotonic() < deadline, "the server never saw the cancellation"
        time.sleep(0.1)
    assert metric_total(live, "ae_inference_queue_depth", model="photo") == 0
    assert_serving(live, client)


def test_client_cancel_is_counted_apart_from_deadlines(client: tg.InferenceServerClient, live: LiveServer) -> None:
    """A client that cancels long before its deadline went away (499 `client_disconnected`), not a 504: only a
    cancellation within the slack of the deadline is the client's deadline firing first."""
    route = f"/{SERVICE}/ModelInfer"
    before = {
        s: metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status=s) for s in ("499", "504")
    }
    image = (
        np.random.default_rng(1).uniform(0, 1, size=(1, 3, 560, 560)).astype(np.float32)
    )  # under the 4 MiB message limit
    tensors = [infer_input(input_name("photo", "full"), image), infer_input("sigma", np.full(1, SIGMA, np.float32))]
    answers: list[Any] = []
    call = client.async_infer(
        "photo.full", tensors, callback=lambda result, error: answers.append(error), headers=AUTH, client_timeout=60
    )
    time.sleep(0.3)  # the handler is running the inference (over a second on two cores)
    call.cancel()
    deadline = time.monotonic() + 30
    while metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="499") <= before["499"]:
        assert time.monotonic() < deadline, "the server never saw the cancellation"
        time.sleep(0.1)
    assert metric_total(live, "ae_http_requests_total", method="GRPC", route=route, status="504") == before["504"]
    assert answers and "CANCELLED" in str(answers[0].status())
    assert_serving(live, client)


def test_stream_cancelled_midway(target: str, live: LiveServer, client: tg.InferenceServerClient) -> None:
    streaming = tg.InferenceServerClient(target)
    answers: list[Any] = []
    streaming.start_stream(callback=lambda result, error: answers.append((result, error)), headers=AUTH)
    x = graph_input("conv", "full", batch=8)
    for i in range(30):
        streaming.async_stream_infer("conv.full", [infer_input(input_name("conv", "full"), x)], request_id=str(i))
    time.sleep(0.05)
    streaming.stop_stream(cancel_requests=True)
    streaming.close()
    assert len(answers) <= 30
    deadline = time.monotonic() + 30  # the requests still running are cancelled and counted out
    while metric_total(live, "ae_http_requests_in_flight") > 0 or metric_total(
        live, "ae_inference_queue_depth", model="conv"
    ):
        assert time.monotonic() < deadline, "requests of the cancelled stream left behind"
        time.sleep(0.1)
    assert_serving(live, client)


def test_many_idle_streams_opened_and_dropped(target: str, live: LiveServer, client: tg.InferenceServerClient) -> None:
    """200 streams that never send a request, on 20 connections, dropped at once (half cancelled first): nothing
    is left behind (file descriptors back to where they were) and the server serves."""
    fds = Path(f"/proc/{live.process.pid}/fd")
    before = len(list(fds.iterdir()))

    async def run() -> None:
        channels = [grpc.aio.insecure_channel(target) for _ in range(20)]
        calls = []
        for i in range(200):
            stub = pb_grpc.GRPCInferenceServiceStub(channels[i % len(channels)])
            call = stub.ModelStreamInfer(metadata=tuple(AUTH.items()))
            calls.append(call)
        await asyncio.gather(*(call.wait_for_connection() for call in calls))
        await asyncio.sleep(0.5)
        for i, call in enumerate(calls):
            if i % 2:
                call.cancel()
        for channel in channels:
            await channel.close(grace=None)

    asyncio.run(run())
    deadline = time.monotonic() + 30
    while metric_total(live, "ae_http_requests_in_flight") > 0 or len(list(fds.iterdir())) > before + 4:
        assert time.monotonic() < deadline, f"left behind: {len(list(fds.iterdir()))} fds, {before} before"
        time.sleep(0.1)
    assert_serving(live, client)


def test_request_fields_round_trip_through_json(client: tg.InferenceServerClient) -> None:
    """`as_json` answers (tritonclient's JSON view of the protobuf) carry the same ids and shapes."""
    x = graph_input("dense", "encoder", batch=1)
    result = client.infer("dense.encoder", [infer_input("x", x)], request_id="j-1", headers=AUTH)
    as_json = json_format.MessageToDict(result.get_response())
    assert as_json["id"] == "j-1" and as_json["outputs"][0]["shape"] == ["1", "32"]


# -- the factory under plain uvicorn, and the shutdown ---------------------------------------------------------
def test_uvicorn_factory_serves_grpc_and_drains_on_sigterm(model_copy: Any, tmp_path: Path) -> None:
    """`uvicorn app.main:create_app --factory` serves gRPC too (the lifespan starts it). On SIGTERM the health
    service turns NOT_SERVING during the drain, an inference in flight (held 1 s by the batcher) still gets its
    answer, new RPCs are refused once the server stops, and the process exits. With the queue full, a request is
    refused UNAVAILABLE."""
    models = model_copy("dense")
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "AE_MODELS_DIR": str(models),
        "AE_GRPC_PORT": str(grpc_port),
        "AE_BATCH_MAX_DELAY_MS": "1000",
        "AE_QUEUE_MAX_REQUESTS": "1",
        "AE_DRAIN_SECONDS": "0.4",  # over before the inference: the gRPC stop waits for it
        "AE_LOG_LEVEL": "info",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    try:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            client = tg.InferenceServerClient(target)
            x = graph_input("dense", "encoder", batch=1)
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                in_flight = pool.submit(client.infer, "dense.encoder", [infer_input("x", x)], client_timeout=30)
                time.sleep(0.3)
                # the queue (bound 1) is full with it: the next one is refused at once, UNAVAILABLE (503 on HTTP)
                refused = grpc_error(lambda: client.infer("dense.encoder", [infer_input("x", x)], client_timeout=10))
                assert refused.status() == "StatusCode.UNAVAILABLE" and "queue" in refused.message(), refused
                process.send_signal(signal.SIGTERM)
                time.sleep(0.1)
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
                result = in_flight.result(timeout=30)
                assert time.monotonic() - started >= 0.9  # it really was in flight across the signal
                assert result.as_numpy("z").shape == (1, 32)
            process.wait(timeout=30)
            error = grpc_error(lambda: client.is_server_live(client_timeout=5))
            assert error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
            client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "grpc server stopped" in log and "Traceback" not in log, log


def test_readme_grpc_example_runs(target: str, tmp_path: Path) -> None:
    """The Python block of the README's "gRPC" section runs and prints what its `# expected` comments say."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"^## gRPC\n(.*?)(?=^## )", readme, re.S | re.M)
    assert found, "README.md has no '## gRPC' section"
    (block,) = re.findall(r"^```python\n(.*?)^```", found.group(1), re.S | re.M)
    expected = re.findall(r"print\(.*\)\s+# (.+)$", block, re.M)
    script = block.replace("127.0.0.1:8001", target)
    env = {**os.environ, "AE_API_KEY": API_KEY}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_repository_load_and_unload_with_model_control(model_copy: Any, tmp_path: Path) -> None:
    """With `AE_MODEL_CONTROL=explicit` the repository RPCs act as `/v2/repository/...`: unload (the model is then
    unknown), index (UNAVAILABLE), load (it serves again); Triton's config override is refused."""
    models = model_copy("dense")
    grpc_port = free_port()
    env = {"AE_MODEL_CONTROL": "explicit"}
    args = ["--grpc-port", str(grpc_port)]
    with (
        running(models, tmp_path / "server.log", env, args=args) as server,
        tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client,
    ):
        x = graph_input("dense", "encoder", batch=1)
        client.unload_model("dense")
        error = grpc_error(lambda: client.infer("dense.encoder", [infer_input("x", x)]))
        assert error.status() == "StatusCode.NOT_FOUND"
        index = client.get_model_repository_index()
        assert [(m.name, m.state) for m in index.models] == [("dense", "UNAVAILABLE")]
        error = grpc_error(lambda: client.load_model("dense", config='{"max_batch_size": 8}'))
        assert error.status() == "StatusCode.INVALID_ARGUMENT" and "config" in error.message()
        client.load_model("dense")
        assert client.is_model_ready("dense.encoder")
        assert client.infer("dense.encoder", [infer_input("x", x)]).as_numpy("z").shape == (1, 32)
        assert httpx.get(f"{server.base}/v2/models/dense.encoder/ready", timeout=10).status_code == 200


def test_every_worker_serves_grpc_with_so_reuseport(model_copy: Any, tmp_path: Path) -> None:
    """`--workers 2`: both worker processes bind the gRPC port (SO_REUSEPORT) and the kernel spreads new
    connections over them."""
    models = model_copy("dense")
    grpc_port = free_port()
    args = ["--grpc-port", str(grpc_port), "--workers", "2"]
    with running(models, tmp_path / "server.log", args=args) as server:
        deadline = time.monotonic() + 60  # /readyz answered from one worker; the other may still be starting
        while server.log().count('"grpc server started"') < 2:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        x = graph_input("dense", "encoder", batch=1)
        # A new connection each time: gRPC otherwise shares a channel's connection with the next channel to the same
        # target when the first has not finished closing (its global subchannel pool), and all 24 can reach one worker.
        local = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(24):
            with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}", channel_args=local) as client:
                assert client.infer("dense.encoder", [infer_input("x", x)]).as_numpy("z").shape == (1, 32)
        log = server.log()
    pids = {json.loads(line)["pid"] for line in log.splitlines() if line.startswith("{") and '"grpc request"' in line}
    assert len(pids) == 2, log[-3000:]
    assert log.count('"grpc server started"') == 2


def test_grpc_and_http_requests_share_one_batcher(model_copy: Any, tmp_path: Path) -> None:
    """Not a second service: a gRPC and a V2 HTTP request that wait together are merged into one ONNX Runtime
    call (`endpoint="mixed"`), and each gets its own rows back."""
    models = model_copy("dense")
    grpc_port = free_port()
    env = {"AE_BATCH_MAX_DELAY_MS": "1000"}  # the first waits up to 1 s for company
    with running(models, tmp_path / "server.log", env, args=["--grpc-port", str(grpc_port)]) as server:
        a = graph_input("dense", "encoder", batch=2, seed=1)
        b = graph_input("dense", "encoder", batch=3, seed=2)
        tensor = {"name": "x", "shape": [3, 784], "datatype": "FP32", "parameters": {"binary_data_size": b.nbytes}}
        header = orjson.dumps({"inputs": [tensor]})

        def over_http() -> np.ndarray:
            answer = httpx.post(
                f"{server.base}/v2/models/dense.encoder/infer",
                content=header + b.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            return np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 32)

        with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client, ThreadPoolExecutor(2) as pool:
            grpc_answer = pool.submit(client.infer, "dense.encoder", [infer_input("x", a)], client_timeout=30)
            http_answer = pool.submit(over_http)
            z_a, z_b = grpc_answer.result().as_numpy("z"), http_answer.result()
        reference = Reference(models)
        np.testing.assert_allclose(z_a, reference.run("dense", "encoder", a)["z"], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(z_b, reference.run("dense", "encoder", b)["z"], rtol=0, atol=TOLERANCE)
        assert metric_total(server, "ae_inference_batch_size_sum", model="dense", endpoint="mixed") == 5


def test_tensor_decoding_names_what_is_wrong() -> None:
    """The protobuf decoding alone (no server): typed fields per datatype, integer ranges, BYTES and FP16."""
    from app.api.grpc.tensors import parse_infer_request
    from app.core.errors import BadRequest

    def decode(datatype: str, shape: list[int], **contents: list[Any]) -> Any:
        message = pb.ModelInferRequest(model_name="m")
        tensor = message.inputs.add(name="t", datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
        return parse_infer_request(message)

    decoded = decode("INT64", [2], int64_contents=[-5, 7])
    assert decoded.inputs["t"].tolist() == [-5, 7] and decoded.datatypes["t"] == "INT64"
    assert decode("UINT8", [1, 2], uint_contents=[0, 255]).inputs["t"].dtype == np.uint8
    assert decode("FP64", [1], fp64_contents=[0.25]).inputs["t"].dtype == np.float64
    cases = [
        (("UINT8", [1], {"uint_contents": [256]}), "does not fit in UINT8"),
        (("FP32", [1], {"int_contents": [1]}), "takes contents.fp32_contents"),
        (("FP16", [1], {"fp32_contents": [1.0]}), "send it in raw_input_contents"),
        (("BYTES", [1], {"bytes_contents": [b"a"]}), "datatype 'BYTES' is not supported"),
        (("FP32", [-1], {"fp32_contents": [1.0]}), "negative size"),
    ]
    for (datatype, shape, contents), words in cases:
        with pytest.raises(BadRequest) as caught:
            decode(datatype, shape, **contents)
        assert words in caught.value.message and "'t'" in caught.value.message, caught.value.message
