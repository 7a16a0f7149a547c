"""`app.api.v2.protocol` on its own: every datatype both ways, JSON and binary, and the no-copy promises (binary
inputs are views on the request body, binary outputs are views on the result arrays). The models only take FP32,
so the other datatypes are exercised here rather than over the wire."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.api.v2.protocol import DATATYPES, OutputTensor, datatype_of, encode_response, parse_request
from app.core.errors import BadRequest

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**63 - 1]], dtype=np.uint64),  # JSON above 2**63 reads as float: a 400
    "INT8": np.array([[-128, 7, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 7, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 7, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**62), 7, 2**62]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.1, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.1, 1e300]], dtype=np.float64),
}


def test_every_datatype_has_a_sample() -> None:
    assert set(SAMPLES) == set(DATATYPES)


def binary_request(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, str]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ]
        }
    )
    return header + array.astype(DATATYPES[datatype]).tobytes(), str(len(header))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_binary_input_round_trip_is_a_view_on_the_body(datatype: str) -> None:
    array = SAMPLES[datatype]
    body, length = binary_request("t", array, datatype)
    request = parse_request(body, length)
    got = request.inputs["t"]
    assert request.datatypes == {"t": datatype} and datatype_of(got.dtype) == datatype
    np.testing.assert_array_equal(got, array)
    assert np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))  # no copy of the tensor


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d != "FP16"])
@pytest.mark.parametrize("nested", [False, True])
def test_json_input_round_trip(datatype: str, nested: bool) -> None:
    array = SAMPLES[datatype]
    data = array.tolist() if nested else array.reshape(-1).tolist()
    doc = {"id": "r", "inputs": [{"name": "t", "shape": list(array.shape), "datatype": datatype, "data": data}]}
    request = parse_request(orjson.dumps(doc), None)
    assert request.id == "r"
    got = request.inputs["t"]
    assert got.dtype == DATATYPES[datatype].newbyteorder("=") and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(("datatype", "data", "fragment"), [
    ("INT32", [0.5, 1, 2], "numbers that are not INT32"),
    ("UINT8", [0, 256, 1], "does not fit in UINT8"),
    ("INT8", [-129, 0, 1], "does not fit in INT8"),
    ("BOOL", [1, 0, 1], "numbers that are not BOOL"),
    ("FP32", [None, 0, 1], "data[0] is null"),
    ("FP32", [[1], 2, 3], "not a rectangular array"),
    ("FP32", [0.5, True, 1.0], "data[1] is a boolean among numbers"),
    ("FP32", [[0.5, 1.0, False]], "data[0][2] is a boolean among numbers"),
    ("INT32", [1, 2, True], "data[2] is a boolean among numbers"),
])  # fmt: skip
def test_json_values_must_fit_the_datatype(datatype: str, data: list[object], fragment: str) -> None:
    doc = {"inputs": [{"name": "t", "shape": [1, 3], "datatype": datatype, "data": data}]}
    with pytest.raises(BadRequest) as caught:
        parse_request(orjson.dumps(doc), None)
    assert fragment in caught.value.message


def test_booleans_as_parameter_values_do_not_trigger_the_value_search() -> None:
    doc = {
        "parameters": {"binary_data_output": False},
        "inputs": [{"name": "t", "shape": [1, 3], "datatype": "FP32", "data": [0.5, 1, 0.25]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    parsed = parse_request(orjson.dumps(doc), None)
    np.testing.assert_array_equal(parsed.inputs["t"], np.array([[0.5, 1.0, 0.25]], np.float32))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_response_encoding_binary_and_json(datatype: str) -> None:
    array = SAMPLES[datatype]
    buffers, length = encode_response(
        "m.full", "3", "id-1", [OutputTensor("b", array, binary=True), OutputTensor("j", array, binary=False)]
    )
    assert length == len(buffers[0]) and len(buffers) == 2
    header = orjson.loads(buffers[0])
    assert header["model_name"] == "m.full" and header["model_version"] == "3" and header["id"] == "id-1"
    binary, json_out = header["outputs"]
    assert binary == {
        "name": "b",
        "datatype": datatype,
        "shape": list(array.shape),
        "parameters": {"binary_data_size": array.nbytes},
    }
    raw = np.frombuffer(buffers[1], dtype=DATATYPES[datatype]).reshape(array.shape)
    np.testing.assert_array_equal(raw, array)
    assert np.shares_memory(raw, array)  # sent from the result array itself, no copy
    assert json_out["datatype"] == datatype and json_out["shape"] == list(array.shape)
    np.testing.assert_array_equal(np.asarray(json_out["data"], dtype=array.dtype).reshape(array.shape), array)


def test_plain_json_response_has_no_header_length() -> None:
    buffers, length = encode_response("m", "1", None, [OutputTensor("o", SAMPLES["FP32"], binary=False)])
    assert length is None and len(buffers) == 1 and "id" not in orjson.loads(buffers[0])


def test_float32_json_output_round_trips_exactly() -> None:
    """orjson writes the shortest text that reads back as the same float32 (clients cast to FP32)."""
    values = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)
    buffers, _ = encode_response("m", "1", None, [OutputTensor("o", values, binary=False)])
    data = np.asarray(orjson.loads(buffers[0])["outputs"][0]["data"], dtype=np.float32).reshape(values.shape)
    np.testing.assert_array_equal(data, values)
