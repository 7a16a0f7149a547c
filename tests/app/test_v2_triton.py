"""The Open Inference Protocol through the unmodified `tritonclient[http]` client, against a real uvicorn process.

Every V2 model (every graph of every committed model, and the bare-name alias of each full graph) is checked for
readiness, metadata and config against its card, and its results against a direct ONNX Runtime call and the
`/v1` endpoints on the same inputs (within 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.app.conftest import CARDS, TOLERANCE, Reference, sample_input
from tests.app.live import LiveServer, running

# A task whose input is the graph's input, to draw a sample for each graph (see conftest.sample_input).
ROLE_TASK = {"encoder": "encode", "decoder": "decode", "full": "reconstruct"}
# The /v1 task that runs each graph unchanged, and its JSON fields in the graph's output order.
V1_TASKS = {"encoder": ("encode", ["latent"]), "decoder": ("decode", ["reconstruction"])}
V2_MODELS = [(f"{name}.{role}", name, role) for name, card in CARDS.items() for role in card["graphs"]]
V2_MODELS += [(name, name, "full") for name, card in CARDS.items() if "full" in card["graphs"]]


def v2_params() -> list[Any]:
    return [pytest.param(v2_name, model, role, id=v2_name) for v2_name, model, role in V2_MODELS]


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(models_dir, tmp_path_factory.mktemp("v2-triton") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=f"127.0.0.1:{live.port}", concurrency=8, network_timeout=60) as c:
        yield c


def graph_input(model: str, role: str, batch: int = 3, seed: int = 0) -> np.ndarray:
    return sample_input(model, ROLE_TASK[role], batch=batch, seed=seed)


SIGMA = 0.1
"""The noise level fed to graphs that take one besides their samples (the photograph denoiser's `sigma`)."""


def extra_inputs(model: str, role: str, batch: int) -> dict[str, np.ndarray]:
    """The graph's inputs after the first: only the photograph denoiser's `sigma` [N] exists."""
    names = [i["name"] for i in CARDS[model]["graphs"][role]["inputs"][1:]]
    assert set(names) <= {"sigma"}, names
    return {name: np.full(batch, SIGMA, dtype=np.float32) for name in names}


def infer_input(name: str, x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def input_name(model: str, role: str) -> str:
    return str(CARDS[model]["graphs"][role]["inputs"][0]["name"])


def output_names(model: str, role: str) -> list[str]:
    return [o["name"] for o in CARDS[model]["graphs"][role]["outputs"]]


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize(("v2_name", "model", "role"), v2_params())
def test_model_ready_metadata_and_config(
    client: triton.InferenceServerClient, v2_name: str, model: str, role: str
) -> None:
    card = CARDS[model]
    graph = card["graphs"][role]
    assert client.is_model_ready(v2_name)
    assert client.is_model_ready(v2_name, model_version=card["version"])
    assert not client.is_model_ready(v2_name, model_version=card["version"] + "-other")
    metadata = client.get_model_metadata(v2_name)
    assert metadata["name"] == v2_name and metadata["versions"] == [card["version"]]
    assert metadata["platform"] == "onnxruntime_onnx"

    def as_v2(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"name": t["name"], "datatype": "FP32", "shape": [d if isinstance(d, int) else -1 for d in t["shape"]]}
            for t in tensors
        ]

    assert metadata["inputs"] == as_v2(graph["inputs"])
    assert metadata["outputs"] == as_v2(graph["outputs"])
    config = client.get_model_config(v2_name)
    assert config["name"] == v2_name and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] > 0  # every graph here has a leading batch axis
    for key, tensors in (("input", graph["inputs"]), ("output", graph["outputs"])):
        assert [(t["name"], t["data_type"], t["dims"]) for t in config[key]] == [
            (t["name"], "TYPE_FP32", [d if isinstance(d, int) else -1 for d in t["shape"][1:]]) for t in tensors
        ]
    assert "dynamic_batching" in config  # batching is on by default (AE_BATCHING)


@pytest.mark.parametrize(("v2_name", "model", "role"), v2_params())
def test_infer_binary_matches_onnx_runtime(
    client: triton.InferenceServerClient, reference: Reference, v2_name: str, model: str, role: str
) -> None:
    """tritonclient's defaults: binary input, every output asked for in binary (no `outputs` in the request)."""
    x = graph_input(model, role)
    extra = extra_inputs(model, role, len(x))
    tensors = [infer_input(input_name(model, role), x, binary=True)]
    tensors += [infer_input(name, value, binary=True) for name, value in extra.items()]
    result = client.infer(v2_name, tensors, request_id="bin-1")
    response = result.get_response()
    assert response["model_name"] == v2_name and response["model_version"] == CARDS[model]["version"]
    assert response["id"] == "bin-1"
    assert [o["name"] for o in response["outputs"]] == output_names(model, role)
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    want = reference.run(model, role, x, **extra)
    for name in output_names(model, role):
        got = result.as_numpy(name)
        assert got is not None and got.dtype == np.float32 and got.shape == want[name].shape
        # rtol too: the seed designs' codes reach ~20, where batching changes the last float32 bits (2e-6 relative)
        np.testing.assert_allclose(got, want[name], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize(("v2_name", "model", "role"), v2_params())
def test_infer_json_matches_onnx_runtime_and_v1(
    client: triton.InferenceServerClient, live: LiveServer, reference: Reference, v2_name: str, model: str, role: str
) -> None:
    """JSON in (`binary_data=False`) and JSON out; the same numbers as ONNX Runtime and as the /v1 task route."""
    x = graph_input(model, role, batch=2, seed=1)
    extra = extra_inputs(model, role, len(x))
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in output_names(model, role)]
    tensors = [infer_input(input_name(model, role), x, binary=False)]
    tensors += [infer_input(name, value, binary=False) for name, value in extra.items()]
    result = client.infer(v2_name, tensors, outputs=outputs)
    response = result.get_response()
    assert all("data" in o and "parameters" not in o for o in response["outputs"])
    want = reference.run(model, role, x, **extra)
    got = {name: result.as_numpy(name) for name in output_names(model, role)}
    for name, value in got.items():
        assert value is not None
        np.testing.assert_allclose(value, want[name], rtol=0, atol=TOLERANCE)
    task, fields = V1_TASKS.get(role, ("reconstruct", ["reconstruction", "scores"]))
    if task not in CARDS[model]["tasks"]:
        return
    query = f"?sigma={SIGMA * 255:g}" if extra else ""  # /v1 takes the noise level on the 0..255 scale
    v1 = httpx.post(f"{live.base}/v1/models/{model}/{task}{query}", json={"inputs": x.tolist()}, timeout=60)
    assert v1.status_code == 200, v1.text
    for name, field in zip(output_names(model, role), fields, strict=True):
        v1_value = np.asarray(v1.json()[field], dtype=np.float32).reshape(want[name].shape)
        np.testing.assert_allclose(got[name], v1_value, rtol=0, atol=TOLERANCE)


def test_output_selection(client: triton.InferenceServerClient, reference: Reference) -> None:
    """Ask for one output of a two-output graph, in JSON; the other is not returned."""
    x = graph_input("dense", "full", batch=4)
    result = client.infer(
        "dense", [infer_input("x", x, binary=True)], outputs=[triton.InferRequestedOutput("score", binary_data=False)]
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["score"]
    assert result.as_numpy("reconstruction") is None
    np.testing.assert_allclose(result.as_numpy("score"), reference.run("dense", "full", x)["score"], atol=TOLERANCE)
    # Both, one binary and one JSON, in the order asked for.
    result = client.infer(
        "dense.full",
        [infer_input("x", x, binary=False)],
        outputs=[
            triton.InferRequestedOutput("score", binary_data=True),
            triton.InferRequestedOutput("reconstruction", binary_data=False),
        ],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score", "reconstruction"]
    want = reference.run("dense", "full", x)
    for name in ("score", "reconstruction"):
        np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=0, atol=TOLERANCE)


def test_async_infer_with_several_in_flight(client: triton.InferenceServerClient, reference: Reference) -> None:
    """Eight requests in flight at once over the client's connection pool, each answered with its own result."""
    models = [("dense.encoder", "dense", "encoder"), ("conv", "conv", "full")]
    pending = []
    for i in range(8):
        v2_name, model, role = models[i % 2]
        x = graph_input(model, role, batch=1 + i, seed=10 + i)
        request = client.async_infer(v2_name, [infer_input(input_name(model, role), x, binary=True)], request_id=str(i))
        pending.append((request, x, model, role))
    for i, (request, x, model, role) in enumerate(pending):
        result = request.get_result(timeout=60)
        assert result.get_response()["id"] == str(i)
        want = reference.run(model, role, x)
        for name in output_names(model, role):
            np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=0, atol=TOLERANCE)


def test_errors_raise_the_clients_exception_with_our_message(client: triton.InferenceServerClient) -> None:
    x = graph_input("dense", "encoder")
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [infer_input("x", x, binary=True)])
    assert "unknown model 'no-such-model'" in unknown.value.message() and unknown.value.status() == "404"
    assert "dense.encoder" in unknown.value.message()  # the message lists the V2 model names
    assert not client.is_model_ready("no-such-model")

    wrong = np.zeros((2, 783), dtype=np.float32)
    with pytest.raises(InferenceServerException) as shape:
        client.infer("dense.encoder", [infer_input("x", wrong, binary=True)])
    assert "shape [2, 783], expected [-1, 784]" in shape.value.message(), shape.value.message()
    assert shape.value.status() == "422"

    with pytest.raises(InferenceServerException) as name:
        client.infer("dense.encoder", [infer_input("pixels", x, binary=True)])
    assert "unknown input(s) ['pixels']" in name.value.message() and "['x']" in name.value.message()

    with pytest.raises(InferenceServerException) as output:
        client.infer("dense.encoder", [infer_input("x", x, binary=True)], outputs=[triton.InferRequestedOutput("w")])
    assert "unknown output 'w'" in output.value.message()

    with pytest.raises(InferenceServerException) as value:
        client.infer("dense.encoder", [infer_input("x", x * 255, binary=True)])
    assert "outside the allowed range" in value.value.message() and value.value.status() == "422"

    with pytest.raises(InferenceServerException) as metadata:
        client.get_model_metadata("dense.middle")
    assert "unknown model 'dense.middle'" in metadata.value.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_body(client: triton.InferenceServerClient, reference: Reference, algorithm: str) -> None:
    """`request_compression_algorithm`: the body arrives with Content-Encoding and is inflated before parsing
    (the body limit applies to the inflated size; see tests/app/test_hostile.py)."""
    x = graph_input("dense", "encoder", batch=64)
    result = client.infer("dense.encoder", [infer_input("x", x, binary=True)], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("z"), reference.run("dense", "encoder", x)["z"], rtol=0, atol=TOLERANCE)


def test_inference_statistics(client: triton.InferenceServerClient) -> None:
    """Triton's statistics extension (what perf_analyzer reads around each measurement window)."""

    def stats() -> dict[str, Any]:
        entries = client.get_inference_statistics("dense.decoder")["model_stats"]
        assert [e["name"] for e in entries] == ["dense.decoder"]
        return dict(entries[0])

    before = stats()
    x = graph_input("dense", "decoder", batch=5)
    for _ in range(2):
        client.infer("dense.decoder", [infer_input("z", x, binary=True)])
    with pytest.raises(InferenceServerException):
        client.infer("dense.decoder", [infer_input("z", x[:, :31], binary=True)])
    after = stats()
    assert after["version"] == CARDS["dense"]["version"] and after["last_inference"] > 0
    assert after["inference_count"] - before["inference_count"] == 10
    assert after["execution_count"] - before["execution_count"] == 2
    done, failed = after["inference_stats"], before["inference_stats"]
    assert done["success"]["count"] - failed["success"]["count"] == 2
    assert done["fail"]["count"] - failed["fail"]["count"] == 1
    for stage in ("success", "compute_input", "compute_infer", "compute_output"):
        assert done[stage]["ns"] > failed[stage]["ns"], stage
    assert 5 in [b["batch_size"] for b in after["batch_stats"]]
    every = client.get_inference_statistics()["model_stats"]
    assert {e["name"] for e in every} == {name for name, _, _ in V2_MODELS}
    assert client.get_inference_statistics("dense", model_version=CARDS["dense"]["version"])["model_stats"]
