"""The Open Inference Protocol through the KServe Python SDK's REST client in V2 mode (unmodified), against a real
uvicorn process: health, model readiness, JSON and binary inference (same numbers as ONNX Runtime), errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from tests.app.conftest import TOLERANCE, Reference, sample_input
from tests.app.live import LiveServer, running


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(models_dir, tmp_path_factory.mktemp("v2-kserve") / "server.log") as server:
        yield server


def client() -> InferenceRESTClient:
    return InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))


def test_health_and_readiness(live: LiveServer) -> None:
    async def check() -> tuple[bool, ...]:
        async with client() as c:
            return (
                await c.is_server_live(live.base),
                await c.is_server_ready(live.base),
                await c.is_model_ready(live.base, "dense.encoder"),
                await c.is_model_ready(live.base, "dense"),
                await c.is_model_ready(live.base, "no-such-model"),
            )

    assert asyncio.run(check()) == (True, True, True, True, False)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_onnx_runtime(live: LiveServer, reference: Reference, binary: bool) -> None:
    x = sample_input("dense", "reconstruct", batch=3, seed=5)
    tensor = InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest(
        "dense.full",
        [tensor],
        request_id="ks-1",
        parameters={"binary_data_output": binary},
        request_outputs=[RequestedOutput("score", {"binary_data": binary})],
    )

    async def infer() -> object:
        async with client() as c:
            return await c.infer(live.base, request, model_name="dense.full")

    response = asyncio.run(infer())
    assert response.id == "ks-1" and response.model_name == "dense.full"  # type: ignore[attr-defined]
    outputs = {o.name: o.as_numpy() for o in response.outputs}  # type: ignore[attr-defined]
    assert list(outputs) == ["score"]
    np.testing.assert_allclose(outputs["score"], reference.run("dense", "full", x)["score"], rtol=0, atol=TOLERANCE)


def test_errors_carry_our_message(live: LiveServer) -> None:
    wrong = np.zeros((2, 783), dtype=np.float32)
    tensor = InferInput("x", list(wrong.shape), "FP32")
    tensor.set_data_from_numpy(wrong, binary_data=True)

    async def infer(name: str) -> object:
        async with client() as c:
            return await c.infer(live.base, InferRequest(name, [tensor]), model_name=name)

    with pytest.raises(httpx.HTTPStatusError) as shape:
        asyncio.run(infer("dense.encoder"))
    assert "shape [2, 783], expected [-1, 784]" in str(shape.value) and shape.value.response.status_code == 422
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        asyncio.run(infer("no-such-model"))
    assert "unknown model 'no-such-model'" in str(unknown.value) and unknown.value.response.status_code == 404
