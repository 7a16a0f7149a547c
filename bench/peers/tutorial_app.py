"""A peer: the FastAPI + ONNX Runtime app of the blog posts, serving one ONNX encoder.

A pydantic request model, `session.run`, `.tolist()`: what a user writes in an afternoon. It runs in its own
virtualenv (`bench/.venv-tutorial`, from `bench/requirements-tutorial.txt`), never in the service's, started by
`python -m bench` as

    MODEL_PATH=models/dense/encoder.onnx ORT_THREADS=2 uvicorn tutorial_app:app --app-dir bench/peers --workers 1

(uvicorn's defaults otherwise: httptools and uvloop, as `uvicorn[standard]` installs them, access log on).
`ORT_THREADS` is the intra-op thread count our service resolves on the machine; no spinning, as ours.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_NAME = "dense.encoder"
models: dict[str, ort.InferenceSession] = {}


class EncodeRequest(BaseModel):
    inputs: list[list[float]]


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def load_session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    models[MODEL_NAME] = load_session(os.environ["MODEL_PATH"], int(os.environ.get("ORT_THREADS", "0")))
    yield
    models.clear()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/encode")
async def encode(request: EncodeRequest) -> dict[str, Any]:
    session = models[MODEL_NAME]
    x = np.array(request.inputs, dtype=np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {"latent": out.tolist()}


@app.post(f"/v2/models/{MODEL_NAME}/infer")
async def infer(request: InferRequest) -> dict[str, Any]:
    session = models[MODEL_NAME]
    tensor = request.inputs[0]
    x = np.array(tensor.data, dtype=np.float32).reshape(tensor.shape)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    output = {"name": session.get_outputs()[0].name, "shape": list(out.shape), "datatype": "FP32",
              "data": out.ravel().tolist()}  # fmt: skip
    return {"model_name": MODEL_NAME, "outputs": [output]}
