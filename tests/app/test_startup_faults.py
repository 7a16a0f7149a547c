"""A real service process started on a temporary copy of the models in which some are broken on purpose: each
broken model is refused at load with a clear log line, `/readyz` names it and why, and the others serve."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.app.live import start
from tests.app.tiny_models import write_encoder_model


def edit_card(folder: Path, change: Callable[[dict], None]) -> None:
    card = json.loads((folder / "card.json").read_text())
    change(card)
    (folder / "card.json").write_text(json.dumps(card))


def external_data_model(folder: Path, location: str) -> None:
    """A valid one-graph model (z = x @ W) whose weight lives in external data at `location`, with a card whose
    size and sha256 match the ONNX file: only the external data gives it away."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    write_encoder_model(folder, graph, "external data test model", None, check=False)


@pytest.mark.slow
def test_broken_models_are_refused_at_start_up_and_the_others_serve(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name in ("dense", "dense-shallow", "conv"):
        shutil.copytree(models_dir / name, root / name)
    # dense: one byte of a graph changed (the card's sha256 no longer matches)
    tampered = bytearray((root / "dense" / "encoder.onnx").read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    (root / "dense" / "encoder.onnx").write_bytes(bytes(tampered))
    # conv: a graph cut short (a half-copied file)
    decoder = root / "conv" / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:1000])
    # missing: the card names a file that is not there
    shutil.copytree(models_dir / "dense", root / "missing")
    edit_card(root / "missing", lambda card: card.update(name="missing"))
    (root / "missing" / "full.onnx").unlink()
    # escape: weights in external data outside the model folder (a secret file next to the models)
    (tmp_path / "secret.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    external_data_model(root / "escape", "../../secret.bin")

    server = start(root, tmp_path / "server.log", {"AE_LOG_LEVEL": "info"})
    try:
        ready = httpx.get(f"{server.base}/readyz", timeout=10)
        assert ready.status_code == 503
        not_ready = ready.json()["not_ready"]
        assert set(not_ready) == {"dense", "conv", "missing", "escape"}, not_ready
        assert "sha256 of encoder.onnx" in not_ready["dense"]
        assert "decoder.onnx is 1000 bytes" in not_ready["conv"]
        assert "cannot read full.onnx" in not_ready["missing"]
        assert "outside the model folder (../../secret.bin)" in not_ready["escape"]
        models = ready.json()["models"]
        assert models["dense-shallow"]["status"] == "ready"

        # The healthy model serves; the broken ones answer 503 with the reason.
        ok = httpx.post(f"{server.base}/v1/models/dense-shallow/encode", json={"inputs": [[0.5] * 784]}, timeout=10)
        assert ok.status_code == 200
        refused = httpx.post(f"{server.base}/v1/models/dense/encode", json={"inputs": [[0.5] * 784]}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "model_unavailable"
        assert "sha256" in refused.json()["error"]["message"]
    finally:
        code = server.stop()
    assert code == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    failures = {line["model"]: line["reason"] for line in lines if line.get("message") == "model failed to load"}
    assert set(failures) == {"dense", "conv", "missing", "escape"}, failures
    assert "sha256" in failures["dense"] and "external data" in failures["escape"]
