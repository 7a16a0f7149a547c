"""The gRPC inference messages <-> numpy: pure decoding and encoding, no server, no models.

A `ModelInferRequest` carries each input either as typed `contents` (`fp32_contents`, `int64_contents`, ...) or,
for every input at once, as `raw_input_contents` (row-major little-endian bytes, one entry per input, in order):
what tritonclient sends. It decodes into the same `InferRequest` as the HTTP bodies (`app/api/v2/protocol.py`),
so `dataplane.plan_inference` applies the same checks whatever the transport. Answers carry their tensors in
`raw_output_contents`, as Triton's do (tritonclient's `as_numpy` reads only those for numeric tensors).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb  # type: ignore[import-untyped]

from app.api.v2.protocol import DATATYPES, InferRequest, OutputTensor, RequestedOutput, datatype_of
from app.core.errors import BadRequest

# The typed field of `InferTensorContents` for each datatype (FP16 has none: raw only), as KServe's proto says.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
CONTENTS_FIELDS = sorted(set(CONTENTS_FIELD.values()) | {"bytes_contents"})
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def parameter_value(parameter: Any) -> Any:
    """The value an `InferParameter` holds (whichever of its fields is set), or None."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _filled_fields(contents: Any) -> list[str]:
    return [name for name in CONTENTS_FIELDS if len(getattr(contents, name))]


def _typed(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    filled = _filled_fields(contents)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents")
    if not filled:
        raise BadRequest(f"input {name!r} has no data: fill contents.{field} or send raw_input_contents")
    if filled != [field]:
        raise BadRequest(
            f"input {name!r}: datatype {datatype} takes contents.{field}, but the request filled "
            + ", ".join(f"contents.{f}" for f in filled),
            {"input": name, "datatype": datatype, "expected": field},
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: contents.{field} holds {len(values)} values but shape {list(shape)} needs {count}",
            {"input": name, "values": len(values), "shape": list(shape)},
        )
    dtype = DATATYPES[datatype].newbyteorder("=")
    if dtype.kind in "iu":
        wide = np.array(values, dtype=np.int64 if field in ("int_contents", "int64_contents") else np.uint64)
        info = np.iinfo(dtype)
        if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
            raise BadRequest(f"input {name!r}: a value does not fit in {datatype}", {"input": name})
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def _raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes, position: int) -> np.ndarray:
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: raw_input_contents[{position}] holds {len(raw)} bytes but shape {list(shape)} of "
            f"{datatype} takes {expected}",
            {"input": name, "raw_bytes": len(raw), "expected": expected},
        )
    array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def parse_infer_request(message: Any) -> InferRequest:
    """Decode a `ModelInferRequest` (typed contents, or raw_input_contents); 400 (INVALID_ARGUMENT) naming the
    tensor that is wrong."""
    for key in message.parameters:
        if key in _SEQUENCE:
            raise BadRequest(f"parameter {key!r}: sequence batching is not offered (these models are stateless)")
    if not message.inputs:
        raise BadRequest("inputs must be a non-empty list of tensors (name, datatype, shape, contents)")
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents holds {len(raw_contents)} tensors but the request has {len(message.inputs)} inputs: "
            "send every input raw (one entry per input, in order) or every input in contents",
            {"raw_input_contents": len(raw_contents), "inputs": len(message.inputs)},
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for position, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise BadRequest(f"inputs[{position}].name must be a non-empty string")
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            offered = ", ".join(DATATYPES)
            raise BadRequest(f"input {name!r}: datatype {datatype!r} is not supported; use one of {offered}")
        for key in tensor.parameters:
            if key in _SHARED_MEMORY:
                raise BadRequest(f"input {name!r}: parameter {key!r}: the shared-memory extension is not offered")
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"input {name!r}: shape {list(shape)} has a negative size")
        if raw_contents:
            if _filled_fields(tensor.contents):
                raise BadRequest(f"input {name!r} has both contents and raw_input_contents; send one")
            inputs[name] = _raw(name, datatype, shape, raw_contents[position], position)
        else:
            inputs[name] = _typed(name, datatype, shape, tensor.contents)
        datatypes[name] = datatype
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=message.id or None,
        outputs=_requested_outputs(message.outputs),
        binary_output=True,
    )


def _requested_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if not outputs:
        return None
    requested: list[RequestedOutput] = []
    for output in outputs:
        name = output.name
        if any(r.name == name for r in requested):
            raise BadRequest(f"output {name!r} is asked for twice")
        for key in output.parameters:
            if key in _SHARED_MEMORY:
                raise BadRequest(f"output {name!r}: parameter {key!r}: the shared-memory extension is not offered")
            if key == "classification" and parameter_value(output.parameters[key]):
                raise BadRequest(f"output {name!r}: the classification extension is not offered")
        requested.append(RequestedOutput(name, True))
    return requested


def infer_response(model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]) -> Any:
    """A `ModelInferResponse` with every output in `raw_output_contents` (little-endian, row-major)."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for output in outputs:
        array = output.array
        response.outputs.add(name=output.name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return response
