"""KServe's own Python SDK (`kserve.InferenceRESTClient`, protocol v2) against a real server.

The SDK runs in a child process: importing `kserve` registers KServe's `inference.*` protobuf messages in the
process-wide descriptor pool, and tritonclient's gRPC stubs (tests/app/test_grpc.py, in this process) register
the same names from another file, which protobuf refuses. One client per process, as in real use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.app.conftest import TOLERANCE, Reference, sample_input
from tests.app.live import LiveServer, running

CLIENT = r"""
import asyncio, json, sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

base, x_path = sys.argv[1], sys.argv[2]
x = np.load(x_path)


def client():
    return InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))


async def health():
    async with client() as c:
        return [
            await c.is_server_live(base),
            await c.is_server_ready(base),
            await c.is_model_ready(base, "dense.encoder"),
            await c.is_model_ready(base, "dense"),
            await c.is_model_ready(base, "no-such-model"),
        ]


async def infer(binary):
    tensor = InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest(
        "dense.full",
        [tensor],
        request_id="ks-1",
        parameters={"binary_data_output": binary},
        request_outputs=[RequestedOutput("score", {"binary_data": binary})],
    )
    async with client() as c:
        response = await c.infer(base, request, model_name="dense.full")
    outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
    return {"id": response.id, "model_name": response.model_name, "outputs": outputs}


async def error(name):
    wrong = np.zeros((2, 783), dtype=np.float32)
    tensor = InferInput("x", list(wrong.shape), "FP32")
    tensor.set_data_from_numpy(wrong, binary_data=True)
    try:
        async with client() as c:
            await c.infer(base, InferRequest(name, [tensor]), model_name=name)
    except httpx.HTTPStatusError as exc:
        return {"status": exc.response.status_code, "message": str(exc)}
    return {"status": None, "message": "no error"}


async def main():
    return {
        "health": await health(),
        "json": await infer(False),
        "binary": await infer(True),
        "shape": await error("dense.encoder"),
        "unknown": await error("no-such-model"),
    }


print(json.dumps(asyncio.run(main())))
"""


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(models_dir, tmp_path_factory.mktemp("v2-kserve") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def sdk(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What KServe's SDK saw, every call of this file made in one child process."""
    x_path = tmp_path_factory.mktemp("kserve-input") / "x.npy"
    np.save(x_path, sample_input("dense", "reconstruct", batch=3, seed=5))
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, live.base, str(x_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_health_and_readiness(sdk: dict) -> None:
    assert sdk["health"] == [True, True, True, True, False]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_onnx_runtime(sdk: dict, reference: Reference, binary: bool) -> None:
    response = sdk["binary" if binary else "json"]
    assert response["id"] == "ks-1" and response["model_name"] == "dense.full"
    assert list(response["outputs"]) == ["score"]
    x = sample_input("dense", "reconstruct", batch=3, seed=5)
    want = reference.run("dense", "full", x)["score"]
    np.testing.assert_allclose(np.asarray(response["outputs"]["score"]), want, rtol=0, atol=TOLERANCE)


def test_errors_carry_our_message(sdk: dict) -> None:
    shape, unknown = sdk["shape"], sdk["unknown"]
    assert shape["status"] == 422 and "shape [2, 783], expected [-1, 784]" in shape["message"]
    assert unknown["status"] == 404 and "unknown model 'no-such-model'" in unknown["message"]
