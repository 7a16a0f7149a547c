"""Faults inside the server: a model that produces NaN (built here as a tiny real ONNX file), and an
unexpected exception, both answered in the one JSON error shape with a request id, never a stack trace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.core.engine import InferenceEngine
from app.core.errors import InferenceError
from app.core.registry import ModelRegistry
from app.main import create_app
from app.runtime.metrics import Metrics
from app.settings import Settings
from tests.app.conftest import assert_error, make_client
from tests.app.tiny_models import write_encoder_model


def sqrt_model(folder: Path, offset: float) -> None:
    """encoder: z = sqrt(offset - x) on [batch, 4]; NaN wherever x > offset. Written with its card."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [offset])),
            helper.make_node("Sub", ["c", "x"], ["d"]),
            helper.make_node("Sqrt", ["d"], ["z"]),
        ],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
    )
    write_encoder_model(folder, graph, "sqrt test model", [0.0, 1.0])


def test_non_finite_model_output_is_a_clear_json_error(tmp_path: Path) -> None:
    sqrt_model(tmp_path / "sqrt", offset=0.5)
    with make_client(models_dir=tmp_path) as c:
        ok = c.post("/v1/models/sqrt/encode", json={"inputs": [[0.0, 0.1, 0.25, 0.5]]})
        assert ok.status_code == 200 and ok.json()["latent"][0][0] == pytest.approx(0.5**0.5)
        response = c.post("/v1/models/sqrt/encode", json={"inputs": [[0.0, 0.9, 0.1, 0.1]]})
        error = assert_error(response, 500, "inference_error")
        assert "non-finite" in error["message"] and error["details"]["output"] == "z"
        assert "Traceback" not in response.text
        assert c.post("/v1/models/sqrt/encode", json={"inputs": [[0.2] * 4]}).status_code == 200


def test_one_callers_non_finite_output_fails_only_that_caller_of_a_merged_batch(tmp_path: Path) -> None:
    """The batch's outputs are checked in one pass; when that finds NaN, each caller's rows are checked on their
    own, so the callers whose outputs are finite still get them."""
    sqrt_model(tmp_path / "sqrt", offset=0.5)
    settings = Settings(models_dir=tmp_path, log_level="warning", batch_max_delay_ms=200)
    metrics = Metrics()
    engine = InferenceEngine(metrics, settings)
    registry = ModelRegistry(settings, engine, metrics)
    registry.load_all()
    graph = registry.serving("sqrt").graph_for("encode")

    async def three_callers() -> list[object]:
        try:
            feeds = [{"x": np.full((rows, 4), value, np.float32)} for rows, value in ((1, 0.1), (2, 0.9), (1, 0.2))]
            return await asyncio.gather(*[engine.run(graph, f, "encode") for f in feeds], return_exceptions=True)
        finally:
            await engine.aclose()

    first, second, third = asyncio.run(three_callers())
    assert isinstance(second, InferenceError) and "non-finite" in second.message
    assert isinstance(first, dict) and np.allclose(first["z"], np.sqrt(0.4))
    assert isinstance(third, dict) and np.allclose(third["z"], np.sqrt(0.3))
    counts = [s.value for f in metrics.batch_size.collect() for s in f.samples if s.name.endswith("_count")]
    assert counts == [1.0]  # the three callers were one ONNX Runtime call


def test_model_failing_its_warm_up_is_not_served(tmp_path: Path) -> None:
    sqrt_model(tmp_path / "broken", offset=-1.0)  # NaN on every input
    with make_client(models_dir=tmp_path) as c:
        detail = c.get("/v1/models/broken").json()
        assert detail["status"] == "failed" and "warm-up failed" in detail["reason"]
        assert_error(c.post("/v1/models/broken/encode", json={"inputs": [[0.0] * 4]}), 503, "model_unavailable")


def test_unexpected_exception_is_a_json_500_with_request_id(tmp_path: Path) -> None:
    """The real app with one extra route that raises: the client sees JSON and the request id, not internals."""

    async def explode() -> None:
        raise RuntimeError("secret internals")

    app = create_app(Settings(models_dir=tmp_path, log_level="error"))
    app.add_api_route("/boom", explode)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/boom", headers={"x-request-id": "boom-1"})
        assert c.get("/healthz").status_code == 200
    error = assert_error(response, 500, "internal_error")
    assert "boom-1" in error["message"] and "secret internals" not in response.text
