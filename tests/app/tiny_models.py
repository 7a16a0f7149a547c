"""Tiny hand-built ONNX models with their cards, for tests of how the service treats odd or broken models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnx import helper


def write_encoder_model(
    folder: Path,
    graph: onnx.GraphProto,
    description: str,
    x_range: list[float] | None,
    check: bool = True,
    name: str | None = None,
    version: str = "1",
) -> None:
    """`graph` ([batch, 4] `x` -> [batch, 4] `z`) as `folder/encoder.onnx` with a card whose size and sha256 match.
    `check=False` skips the ONNX checker (for graphs that point at external data the test leaves out); `name` and
    `version` go in the card (the model name defaults to the folder's)."""
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
        "name": name or folder.name,
        "version": version,
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


def _sigma_denoiser_graph(channels: int, gain: float) -> bytes:
    """`clip(x - gain sigma (x - box3x3(x)), 0, 1)` per channel on `x` [batch, channels, height, width]."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    box = numpy_helper.from_array(np.full((channels, 1, 3, 3), 1.0 / 9.0, dtype=np.float32), "box")
    shape = numpy_helper.from_array(np.array([-1, 1, 1, 1], dtype=np.int64), "per_image")
    factor = numpy_helper.from_array(np.array(gain, dtype=np.float32), "factor")
    low = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "low")
    high = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "high")
    nodes = [
        helper.make_node("Conv", ["x", "box"], ["blur"], group=channels, pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["x", "blur"], ["detail"]),
        helper.make_node("Reshape", ["sigma", "per_image"], ["s"]),
        helper.make_node("Mul", ["s", "factor"], ["gain"]),
        helper.make_node("Mul", ["gain", "detail"], ["noise"]),
        helper.make_node("Sub", ["x", "noise"], ["raw"]),
        helper.make_node("Clip", ["raw", "low", "high"], ["denoised"]),
    ]
    image = ["batch", channels, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "sigma_denoiser",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch"]),
        ],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, image)],
        [box, shape, factor, low, high],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_sigma_denoiser(folder: Path, gray: bool = False) -> None:
    """A photograph-denoiser-shaped model: `x` [batch, 3, height, width] and `sigma` [batch] -> `denoised`,
    `clip(x - 4 sigma (x - box3x3(x)), 0, 1)` per channel (receptive radius 1), as `folder/full.onnx` + card.
    `gray`: also a gray specialist as photo has one, `gray.onnx` on [batch, 1, height, width] with gain 8 (so a
    test sees which graph ran)."""
    folder.mkdir(parents=True)
    graphs = {}
    for role, channels, gain in (("full", 3, 4.0), ("gray", 1, 8.0))[: 2 if gray else 1]:
        data = _sigma_denoiser_graph(channels, gain)
        (folder / f"{role}.onnx").write_bytes(data)
        image = ["batch", channels, "height", "width"]
        pixels = {"dtype": "float32", "range": [0.0, 1.0], "layout": f"NCHW, {channels} channels", "description": ""}
        graphs[role] = {
            "file": f"{role}.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "inputs": [
                {"name": "x", "shape": image, **pixels},
                {
                    "name": "sigma",
                    "shape": ["batch"],
                    "dtype": "float32",
                    "range": [0.0, 1.0],
                    "layout": "[N]",
                    "description": "noise sigma / 255",
                },
            ],
            "outputs": [{"name": "denoised", "shape": image, **pixels}],
        }
    card = {
        "schema_version": 1,
        "name": folder.name,
        "version": "1",
        "kind": "photo-denoiser",
        "description": "test model shaped as the photograph denoiser",
        "tasks": ["denoise"],
        "graphs": graphs,
        "input": {
            "layout": "image",
            "range": [0.0, 1.0],
            "image": {"height": None, "width": None, "channels": 3, "min_side": 2},
            "fully_convolutional": True,
        },
    }
    (folder / "card.json").write_text(json.dumps(card))


def write_fixed_colour_model(folder: Path, side: int) -> None:
    """A fixed-size colour model: `x` [batch, 3, side, side] -> `z` (the pixels flattened, `encoder.onnx`) and
    -> `denoised` (the pixels as they are, `full.onnx`), so a test sees exactly the tensor the model was fed."""
    from onnx import TensorProto

    folder.mkdir(parents=True)
    image = ["batch", 3, side, side]
    pixels = {"dtype": "float32", "range": [0.0, 1.0], "layout": "NCHW, 3 channels", "description": ""}
    graphs = {}
    for role, op, out, out_shape in (
        ("encoder", "Flatten", "z", ["batch", 3 * side * side]),
        ("full", "Identity", "denoised", image),
    ):
        graph = helper.make_graph(
            [helper.make_node(op, ["x"], [out])],
            f"colour_{role}",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, image)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        (folder / f"{role}.onnx").write_bytes(data)
        graphs[role] = {
            "file": f"{role}.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "inputs": [{"name": "x", "shape": image, **pixels}],
            "outputs": [{"name": out, "shape": out_shape, **pixels}],
        }
    card = {
        "schema_version": 1,
        "name": folder.name,
        "version": "1",
        "kind": "test",
        "description": f"test model: {side}x{side} colour images",
        "tasks": ["encode", "denoise"],
        "graphs": graphs,
        "input": {"layout": "image", "range": [0.0, 1.0], "image": {"height": side, "width": side, "channels": 3}},
    }
    (folder / "card.json").write_text(json.dumps(card))
