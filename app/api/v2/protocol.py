"""The Open Inference Protocol's REST bodies <-> numpy: pure parsing and encoding, no HTTP, no models.

A request body is a JSON header, optionally followed by the binary tensor data extension's raw tensors: the
`Inference-Header-Content-Length` header then says how many bytes the JSON takes, and every input sent in binary
carries `parameters.binary_data_size` instead of `data` (tensors follow the JSON in the order of `inputs`,
row-major, little-endian). Responses mirror it: outputs asked for in binary carry `binary_data_size` and their
bytes follow the JSON header. See https://github.com/kserve/open-inference-protocol and Triton's
`binary_data.md`.

Nothing here copies a tensor it does not have to: binary inputs are `np.frombuffer` views on the request body
and binary outputs are memoryviews on the result arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.core.errors import BadRequest, InvalidJSON

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# The protocol's tensor datatypes that map onto a numpy dtype (BYTES, i.e. strings, is not offered: no model
# of ours takes text). Binary data is little-endian whatever the machine.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_OF_KIND = {np.dtype(dtype).newbyteorder("="): name for name, dtype in DATATYPES.items()}
# Which numpy kinds JSON `data` may hold for each datatype family (JSON has no int/float distinction beyond
# the literal, so integers are fine for floating tensors but not the other way round).
_JSON_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
# `model_name` / `model_version` are not in the protocol's request but the KServe SDK sends them; the path decides.
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's name for a numpy dtype (`float32` -> `FP32`)."""
    name = _DATATYPE_OF_KIND.get(dtype.newbyteorder("="))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's `outputs`: which tensor, and whether it comes back as raw bytes."""

    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded inference request: every input as an array in its declared datatype and shape."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    binary_output: bool = False  # `parameters.binary_data_output`: the default for outputs not listed
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool


# -- requests -----------------------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary part of a body, by `Inference-Header-Content-Length` (no copy)."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not text.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be the byte length of the JSON header, got {header_length!r}")
    length = int(text)
    if length == 0 or length > len(body):
        raise BadRequest(
            f"{HEADER_LENGTH} is {length} but the body holds {len(body)} bytes: it must be the byte length of the "
            "JSON header that starts the body (1 to the body's length)",
            {"header_length": length, "body_bytes": len(body)},
        )
    return view[:length], view[length:]


def _load_json(header: memoryview, split: bool) -> dict[str, Any]:
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if split and bytes(header[:1]) == b"{" and bytes(header[-1:]) != b"}":
            hint = f" (is {HEADER_LENGTH} the exact byte length of the JSON header?)"
        raise InvalidJSON(f"the inference request is not valid JSON: {exc}{hint}") from exc
    if not isinstance(doc, dict):
        raise BadRequest('the inference request must be a JSON object: {"inputs": [...]}')
    return doc


def _parameters(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}.parameters must be an object")
    return value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise BadRequest(f"input {name!r}: shape must be a list of integers, got {value!r}")
    if any(d < 0 for d in value):
        raise BadRequest(f"input {name!r}: shape {value} has a negative size")
    return tuple(value)


def _first_bad_leaf(data: list[Any]) -> str:
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object"}.get(
                type(value), f"{type(value).__name__}"
            )
            return f"data{where} is {kind}"
    return "data is not a rectangular array of numbers (nested lists of unequal length?)"


def _boolean_in_array(text: bytes) -> bool:
    """Whether a JSON `true`/`false` follows `[` or `,` (an array element, not an object's value). Found with
    `bytes.find` (a regex over a 64x784 body took 4.4 ms, longer than parsing it)."""
    for token in (b"true", b"false"):
        at = text.find(token)
        while at != -1:
            before = at - 1
            while before >= 0 and text[before] in b" \t\r\n":  # each space is passed once: linear in the body
                before -= 1
            if before >= 0 and text[before] in b"[,":
                return True
            at = text.find(token, at + len(token))
    return False


def _bool_leaf(data: list[Any]) -> str | None:
    """Where a boolean sits among numbers (numpy would silently make it 1 or 0), or None."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, bool):
            return f"data{where}"
    return None


def json_data(
    name: str, data: Any, shape: tuple[int, ...], datatype: str, may_hold_booleans: bool = True
) -> np.ndarray:
    """`data` (flat, or nested in the tensor's shape; row-major) as an array of `datatype` in `shape`.

    `may_hold_booleans=False` (the request's JSON has no `true`/`false` inside an array) skips the per-value
    search for a boolean mixed among numbers."""
    dtype = DATATYPES[datatype]
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list of values (flat or nested, row-major)")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise BadRequest(f"input {name!r}: {_first_bad_leaf(data)}") from None
    if may_hold_booleans and array.dtype.kind in "iuf":
        where = _bool_leaf(data)
        if where is not None:
            raise BadRequest(
                f"input {name!r}: {where} is a boolean among numbers; {datatype} data must be numbers",
                {"input": name, "datatype": datatype},
            )
    allowed = _JSON_KINDS[dtype.kind]
    if array.dtype.kind not in allowed:
        if array.dtype.kind in "iufb":
            raise BadRequest(
                f"input {name!r}: data holds {'booleans' if array.dtype.kind == 'b' else 'numbers'} that are "
                f"not {datatype} values",
                {"input": name, "datatype": datatype},
            )
        raise BadRequest(f"input {name!r}: {_first_bad_leaf(data)}; {datatype} data must be numbers")
    count = math.prod(shape)
    if array.size != count:
        raise BadRequest(
            f"input {name!r}: data holds {array.size} values but shape {list(shape)} needs {count}",
            {"input": name, "values": int(array.size), "shape": list(shape)},
        )
    if array.ndim > 1 and array.shape != shape:
        raise BadRequest(
            f"input {name!r}: nested data has shape {list(array.shape)} but shape says {list(shape)} (send it "
            "flat, row-major, or nested exactly as the shape)",
            {"input": name, "data_shape": list(array.shape), "shape": list(shape)},
        )
    if dtype.kind == "f" and array.dtype.kind == "f" and array.size:
        biggest = float(np.max(np.abs(array)))  # an infinity is left to the value checks after this
        if math.isfinite(biggest) and biggest > float(np.finfo(dtype).max):
            raise BadRequest(f"input {name!r}: value {biggest:g} does not fit in {datatype}", {"input": name})
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise BadRequest(f"input {name!r}: a value does not fit in {datatype}", {"input": name})
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON + binary tensors); 400 naming what is wrong."""
    header, binary = split_body(body, header_length)
    doc = _load_json(header, header_length is not None)
    # A `true`/`false` right after `[` or `,` is a boolean inside an array: only then are the values searched.
    booleans_in_arrays = _boolean_in_array(bytes(header))
    unknown = sorted(set(doc) - _REQUEST_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown} in the inference request; it holds {sorted(_REQUEST_KEYS)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    parameters = _parameters("request", doc.get("parameters"))
    for key in _SEQUENCE:
        if key in parameters:
            raise BadRequest(f"parameter {key!r}: sequence batching is not offered (these models are stateless)")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("inputs must be a non-empty list of tensors ({name, shape, datatype, data})")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for position, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise BadRequest(f"inputs[{position}] must be an object {{name, shape, datatype, data}}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"inputs[{position}].name must be a non-empty string")
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        extra = sorted(set(item) - _INPUT_KEYS)
        if extra:
            raise BadRequest(f"input {name!r}: unknown field(s) {extra}; an input holds {sorted(_INPUT_KEYS)}")
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            offered = ", ".join(DATATYPES)
            raise BadRequest(f"input {name!r}: datatype {datatype!r} is not supported; use one of {offered}")
        shape = _shape(name, item.get("shape"))
        params = _parameters(f"input {name!r}", item.get("parameters"))
        for key in _SHARED_MEMORY:
            if key in params:
                raise BadRequest(f"input {name!r}: parameter {key!r}: the shared-memory extension is not offered")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise BadRequest(f"input {name!r} has both data and binary_data_size; send one")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a byte count, got {size!r}")
            dtype = DATATYPES[datatype]
            count = math.prod(shape)
            if size != count * dtype.itemsize:
                raise BadRequest(
                    f"input {name!r}: binary_data_size is {size} bytes but shape {list(shape)} of {datatype} takes "
                    f"{count * dtype.itemsize}",
                    {"input": name, "binary_data_size": size, "expected": count * dtype.itemsize},
                )
            if offset + size > len(binary):
                missing = "" if header_length is not None else f" (no {HEADER_LENGTH} header: the body is all JSON)"
                raise BadRequest(
                    f"input {name!r}: binary_data_size says {size} bytes but only {len(binary) - offset} bytes of "
                    f"binary data are left in the body{missing}",
                    {"input": name, "binary_data_size": size, "available": len(binary) - offset},
                )
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            inputs[name] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
            offset += size
        elif "data" in item:
            inputs[name] = json_data(name, item["data"], shape, datatype, booleans_in_arrays)
        else:
            raise BadRequest(f"input {name!r} has neither data nor parameters.binary_data_size")
        datatypes[name] = datatype
    if offset != len(binary):
        raise BadRequest(
            f"the body holds {len(binary)} bytes of binary data after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}",
            {"binary_bytes": len(binary), "declared": offset},
        )
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=request_id,
        outputs=_requested_outputs(doc.get("outputs"), binary_output),
        binary_output=binary_output,
        parameters=parameters,
    )


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("outputs must be a list of {name, parameters}")
    requested: list[RequestedOutput] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{position}] must be an object with a name")
        name = item["name"]
        extra = sorted(set(item) - _OUTPUT_KEYS)
        if extra:
            raise BadRequest(f"output {name!r}: unknown field(s) {extra}; an output holds {sorted(_OUTPUT_KEYS)}")
        if any(r.name == name for r in requested):
            raise BadRequest(f"output {name!r} is asked for twice")
        params = _parameters(f"output {name!r}", item.get("parameters"))
        if params.get("classification"):
            raise BadRequest(f"output {name!r}: the classification extension is not offered")
        for key in _SHARED_MEMORY:
            if key in params:
                raise BadRequest(f"output {name!r}: parameter {key!r}: the shared-memory extension is not offered")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: parameters.binary_data must be true or false")
        requested.append(RequestedOutput(name, binary))
    return requested


# -- responses ----------------------------------------------------------------------------------------------
def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[list[bytes | memoryview], int | None]:
    """The response body as buffers to send in order, and the JSON header's length when binary data follows
    (None: the body is plain JSON)."""
    described: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for output in outputs:
        array = output.array
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if output.binary:
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            buffers.append(little.data.cast("B"))
            entry["parameters"] = {"binary_data_size": little.nbytes}
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = described
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return [header], None
    return [header, *buffers], len(header)
