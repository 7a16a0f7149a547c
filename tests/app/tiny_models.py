"""Tiny hand-built ONNX models with their cards, for tests of how the service treats odd or broken models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnx import helper


def write_encoder_model(
    folder: Path, graph: onnx.GraphProto, description: str, x_range: list[float] | None, check: bool = True
) -> None:
    """`graph` ([batch, 4] `x` -> [batch, 4] `z`) as `folder/encoder.onnx` with a card whose size and sha256 match.
    `check=False` skips the ONNX checker (for graphs that point at external data the test leaves out)."""
    folder.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    data = model.SerializeToString()
    (folder / "encoder.onnx").write_bytes(data)
    spec = {"shape": ["batch", 4], "dtype": "float32", "layout": "N x 4", "description": ""}
    card = {
        "schema_version": 1,
        "name": folder.name,
        "version": "1",
        "kind": "test",
        "description": description,
        "tasks": ["encode"],
        "graphs": {
            "encoder": {
                "file": "encoder.onnx",
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "inputs": [{"name": "x", "range": x_range, **spec}],
                "outputs": [{"name": "z", "range": None, **spec}],
            }
        },
        "input": {"layout": "vector", "range": x_range, "image": {"height": 2, "width": 2, "channels": 1}},
    }
    (folder / "card.json").write_text(json.dumps(card))
