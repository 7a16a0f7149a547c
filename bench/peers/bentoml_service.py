"""A peer: the minimal BentoML 1.4 service over the same ONNX encoder (`@bentoml.service` + `@bentoml.api`).

It runs in its own virtualenv (`bench/.venv-bentoml`, from `bench/requirements-bentoml.txt`), never in the
service's, started by `python -m bench` as

    MODEL_PATH=models/dense/encoder.onnx ORT_THREADS=2 \
        bentoml serve bentoml_service:Encoder --working-dir bench/peers --host 127.0.0.1 --port PORT

One worker; BentoML's defaults otherwise (access log and metrics on). `POST /encode` takes the same body as our
`/v1/encode`, `{"inputs": [[784 floats]]}` (BentoML maps the JSON keys to the method's arguments) and answers
`{"latent": [[...]]}`. `ORT_THREADS` is the intra-op thread count our service resolves; no spinning, as ours.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1)
class Encoder:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.environ["MODEL_PATH"], options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @bentoml.api
    def encode(self, inputs: list[list[float]]) -> dict[str, Any]:
        x = np.asarray(inputs, dtype=np.float32)
        out = self.session.run(None, {self.input_name: x})[0]
        return {"latent": out.tolist()}
