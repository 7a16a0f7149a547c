"""The benchmark's cases: one request body each (written to a file wrk sends as is), the route it goes to, how
many rows it carries, and the graph it runs (for the batch sizes the server formed and for the bare runtime).

Payloads are synthetic but shaped like real traffic: MNIST-like digits (mostly 0, the rest k/255 as a client
that divides by 255 sends them), PNG images encoded by Pillow. The same bytes go to our server, the no-op
ceilings and MLServer.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

NPY = "application/x-npy"
JSON = "application/json"


@dataclass(frozen=True)
class Case:
    """One request, sent again and again."""

    name: str
    title: str
    path: str
    body: bytes
    content_type: str | None
    rows: int
    model: str
    graph: str
    sample: np.ndarray = field(repr=False)
    """The request's rows as the graph takes them (float32, batch first): what the bare runtime is fed."""
    headers: tuple[tuple[str, str], ...] = ()
    ceilings: bool = False
    """The no-op ceilings take this body too (a /v1 JSON or .npy body)."""
    peer: bool = False
    """MLServer serves the same request (V2 JSON on the same ONNX file)."""
    min_seconds: float = 0.0
    """Shortest wrk run that completes enough requests (a batch of 32 images of 256x256 takes seconds)."""

    def body_file(self, folder: Path) -> Path:
        path = folder / f"{self.name}.body"
        if not path.exists():
            path.write_bytes(self.body)
        return path


def digits(rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` flattened 28x28 'digits': about 19 % ink (MNIST's share), values k/255 as float64."""
    pixels = np.zeros((rows, 784))
    ink = rng.random((rows, 784)) < 0.19
    pixels[ink] = rng.integers(1, 256, int(ink.sum())) / 255.0
    return pixels


def image(side: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy gray image (uint8): a smooth blob plus noise, so the PNG is neither trivial nor pure noise."""
    y, x = np.mgrid[0:side, 0:side] / side
    blob = np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 12)
    noisy = blob * 200 + rng.normal(0, 25, (side, side))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _card(models_dir: Path, model: str) -> dict:  # type: ignore[type-arg]
    return json.loads((models_dir / model / "card.json").read_text())  # type: ignore[no-any-return]


def v2_json(name: str, rows: np.ndarray) -> bytes:
    """An Open Inference Protocol JSON request: one FP32 tensor, flat row-major data."""
    tensor = {"name": name, "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor]})


def v2_binary(name: str, output: str, rows: np.ndarray) -> tuple[bytes, int]:
    """A V2 binary-extension request (binary in, binary out): JSON header + raw float32 bytes."""
    raw = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    return header + raw, len(header)


def build_cases(models_dir: Path, seed: int = 0) -> list[Case]:
    """Every case of the benchmark, in report order."""
    rng = np.random.default_rng(seed)
    one, many = digits(1, rng), digits(64, rng)
    dense = _card(models_dir, "dense")
    encoder = dense["graphs"]["encoder"]
    x_name, z_name = encoder["inputs"][0]["name"], encoder["outputs"][0]["name"]
    small, large = image(28, rng), image(256, rng)
    v2_path = "/v2/models/dense.encoder/infer"
    binary_body, header_length = v2_binary(x_name, z_name, many)
    f32 = np.float32
    bulk = np.tile(many, (8, 1))  # 512 rows: the batch size where HTTP costs least per row (issue 19's workers target)
    cases = [
        Case("encode-json-1", "/v1 encode, JSON, 1 row", "/v1/encode", orjson.dumps({"inputs": one.tolist()}),
             JSON, 1, "dense", "encoder", one.astype(f32), ceilings=True),
        Case("encode-json-64", "/v1 encode, JSON, 64 rows", "/v1/encode", orjson.dumps({"inputs": many.tolist()}),
             JSON, 64, "dense", "encoder", many.astype(f32), ceilings=True),
        Case("encode-npy-64", "/v1 encode, .npy in and out, 64 rows", "/v1/encode", npy(many), NPY, 64, "dense",
             "encoder", many.astype(f32), headers=(("Accept", NPY),), ceilings=True),
        Case("encode-npy-512", "/v1 encode, .npy in and out, 512 rows", "/v1/encode", npy(bulk), NPY, 512, "dense",
             "encoder", bulk.astype(f32), headers=(("Accept", NPY),)),
        Case("reconstruct-json-1", "/v1 reconstruct, JSON, 1 row", "/v1/reconstruct",
             orjson.dumps({"inputs": one.tolist()}), JSON, 1, "dense", "full", one.astype(f32)),
        Case("denoise-png-28", "/v1 denoise, 28x28 PNG in and out", "/v1/models/denoise/denoise", png(small),
             "image/png", 1, "denoise", "full", (small / 255.0).astype(f32)[None, None]),
        Case("denoise-png-256", "/v1 denoise, 256x256 PNG in and out", "/v1/models/denoise/denoise", png(large),
             "image/png", 1, "denoise", "full", (large / 255.0).astype(f32)[None, None], min_seconds=8),
        Case("v2-json-1", "V2 infer dense.encoder, JSON, 1 row", v2_path, v2_json(x_name, one), JSON, 1, "dense",
             "encoder", one.astype(f32), peer=True),
        Case("v2-json-64", "V2 infer dense.encoder, JSON, 64 rows", v2_path, v2_json(x_name, many), JSON, 64,
             "dense", "encoder", many.astype(f32), peer=True),
        Case("v2-bin-64", "V2 infer dense.encoder, binary extension in and out, 64 rows", v2_path, binary_body,
             "application/octet-stream", 64, "dense", "encoder", many.astype(f32),
             headers=(("Inference-Header-Content-Length", str(header_length)),)),
    ]  # fmt: skip
    return cases
