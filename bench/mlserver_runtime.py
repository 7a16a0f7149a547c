"""The peer's side of the benchmark: an MLServer custom runtime serving one ONNX file with ONNX Runtime.

MLServer ships no ONNX runtime, so this is the ~20 lines a user would write. It runs inside MLServer's own
virtualenv (`bench/.venv-mlserver`), never in the service's. The session options match what our service
resolves on this machine (passed by `bench` as parameters), so the comparison is of the serving stacks.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra if params else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i).astype(np.float32, copy=False) for i in payload.inputs}
        values = self._session.run(self._outputs, feeds)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, values, strict=True)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
