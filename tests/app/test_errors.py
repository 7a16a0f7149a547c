"""Every failure on our routes answers in the one error shape with the right status, naming what is wrong."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import assert_error, make_client, npy_bytes, png_bytes


def digits(n: int = 1, value: float = 0.5) -> list[list[float]]:
    return [[value] * 784 for _ in range(n)]


# -- 400 ------------------------------------------------------------------------------------------------------
def test_malformed_json_is_400_with_position(client: TestClient) -> None:
    response = client.post(
        "/v1/encode", content=b'{"inputs": [[0.1, 0.2,]]}', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_json")
    assert error["details"]["position"] > 0


def test_truncated_npy_is_400(client: TestClient) -> None:
    data = npy_bytes(np.zeros((2, 784), np.float32))[:-10]
    error = assert_error(
        client.post("/v1/encode", content=data, headers={"content-type": "application/x-npy"}), 400, "invalid_npy"
    )
    assert "header says shape [2, 784]" in error["message"]


def test_not_npy_is_400(client: TestClient) -> None:
    response = client.post("/v1/encode", content=b"hello world", headers={"content-type": "application/x-npy"})
    assert_error(response, 400, "invalid_npy")


def test_corrupt_image_is_400(client: TestClient) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8))
    response = client.post("/v1/encode", content=data[: len(data) // 2], headers={"content-type": "image/png"})
    assert_error(response, 400, "invalid_image")


def test_empty_image_is_400(client: TestClient) -> None:
    response = client.post("/v1/encode", files={"file": ("e.png", b"", "image/png")})
    assert_error(response, 400, "invalid_image")


def test_preprocess_on_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/encode?preprocess=mnist", json={"inputs": digits()})
    assert_error(response, 400, "bad_request")


# -- 404 / 405 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nope", "dense.onnx", "%2e%2e%2fetc", "..%2Fdense", "DENSE"])
def test_unknown_model_is_404(client: TestClient, name: str) -> None:
    error = assert_error(client.post(f"/v1/models/{name}/encode", json={"inputs": digits()}), 404)
    assert error["type"] in ("model_not_found", "not_found")


def test_unknown_model_detail_is_404_listing_models(client: TestClient) -> None:
    error = assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert "dense" in error["details"]["models"]


def test_task_the_model_lacks_is_404(client: TestClient) -> None:
    error = assert_error(client.post("/v1/models/denoise/encode", json={"inputs": digits()}), 404, "task_not_supported")
    assert error["details"]["tasks"] == ["denoise"]


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/encode"), 405, "method_not_allowed")


# -- 406 ------------------------------------------------------------------------------------------------------
def test_png_for_latent_codes_is_406(client: TestClient) -> None:
    error = assert_error(client.post("/v1/encode", json={"inputs": digits()}, headers={"accept": "image/png"}), 406)
    assert "not an image" in error["message"]


def test_png_for_several_images_is_406(client: TestClient) -> None:
    response = client.post("/v1/reconstruct", json={"inputs": digits(3)}, headers={"accept": "image/png"})
    error = assert_error(response, 406, "not_acceptable")
    assert "holds 3" in error["message"] and "one image" in error["message"]


def test_png_falls_back_when_accept_allows_json(client: TestClient) -> None:
    response = client.post(
        "/v1/reconstruct", json={"inputs": digits(3)}, headers={"accept": "image/png, application/json;q=0.5"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"


def test_unknown_accept_is_406(client: TestClient) -> None:
    assert_error(client.post("/v1/encode", json={"inputs": digits()}, headers={"accept": "text/csv"}), 406)


# -- 413 ------------------------------------------------------------------------------------------------------
def test_limits_are_413() -> None:
    with make_client(max_body_bytes=4096, max_batch_rows=2, max_image_pixels=1000, max_sequence_length=50) as c:
        assert_error(c.post("/v1/encode", json={"inputs": digits(3)}), 413, "payload_too_large")  # body
    with make_client(max_batch_rows=2) as c:
        error = assert_error(c.post("/v1/encode", json={"inputs": digits(3)}), 413, "payload_too_large")
        assert error["details"]["limit"] == 2
        big = npy_bytes(np.zeros((3, 784), np.float32))
        assert_error(c.post("/v1/encode", content=big, headers={"content-type": "application/x-npy"}), 413)
    with make_client(max_image_pixels=1000) as c:
        data = png_bytes(np.zeros((40, 40), np.uint8))
        error = assert_error(c.post("/v1/models/denoise/denoise", files={"file": ("b.png", data, "image/png")}), 413)
        assert error["details"]["size"] == [40, 40]
    with make_client(max_sequence_length=50) as c:
        series = np.zeros((1, 51, 6)).tolist()
        assert_error(c.post("/v1/models/lstm/encode", json={"inputs": series}), 413)
    with make_client(max_request_values=2 * 784) as c:  # the memory bound of one request, on both protocols
        error = assert_error(c.post("/v1/encode", json={"inputs": digits(3)}), 413, "payload_too_large")
        assert error["details"]["limit"] == 2 * 784 and "2352 input values" in error["message"]
        v2 = {"inputs": [{"name": "x", "shape": [3, 784], "datatype": "FP32", "data": [0.0] * (3 * 784)}]}
        response = c.post("/v2/models/dense.encoder/infer", json=v2)
        assert response.status_code == 413 and "2352 input values" in response.json()["error"]
        assert c.post("/v1/encode", json={"inputs": digits(2)}).status_code == 200


def test_chunked_body_over_the_limit_is_413() -> None:
    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 1024

    with make_client(max_body_bytes=4096) as c:
        response = c.post("/v1/encode", content=chunks(), headers={"content-type": "application/json"})
        assert_error(response, 413, "payload_too_large")


# -- 415 ------------------------------------------------------------------------------------------------------
def test_missing_content_type_is_415(client: TestClient) -> None:
    error = assert_error(client.post("/v1/encode", content=b'{"inputs": [[0]]}'), 415, "unsupported_media_type")
    assert "missing Content-Type" in error["message"]


def test_wrong_content_type_is_415(client: TestClient) -> None:
    assert_error(client.post("/v1/encode", content=b"1,2,3", headers={"content-type": "text/csv"}), 415)


def test_image_to_a_sequence_model_is_415(client: TestClient) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8))
    error = assert_error(client.post("/v1/models/lstm/encode", files={"file": ("a.png", data, "image/png")}), 415)
    assert "sequences, not images" in error["message"]


def test_image_to_decode_is_415(client: TestClient) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8))
    assert_error(client.post("/v1/decode", content=data, headers={"content-type": "image/png"}), 415)


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO"])
def test_image_format_outside_the_allow_list_is_415(client: TestClient, fmt: str) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8), fmt=fmt)
    error = assert_error(client.post("/v1/encode", files={"file": ("x", data, "application/octet-stream")}), 415)
    assert "PNG" in error["message"]


def test_npy_of_the_wrong_dtype_is_422(client: TestClient) -> None:
    data = npy_bytes(np.zeros((1, 784), np.float64))
    error = assert_error(client.post("/v1/encode", content=data, headers={"content-type": "application/x-npy"}), 422)
    assert "float32" in error["message"]


def test_pickled_npy_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    response = client.post("/v1/encode", content=buffer.getvalue(), headers={"content-type": "application/x-npy"})
    assert response.status_code in (400, 422)
    assert_error(response, response.status_code)


# -- 422 ------------------------------------------------------------------------------------------------------
def test_out_of_range_names_field_index_and_range(client: TestClient) -> None:
    rows = digits(2)
    rows[1][17] = 255.0
    error = assert_error(client.post("/v1/encode", json={"inputs": rows}), 422, "value_out_of_range")
    assert error["details"] == {"field": "inputs", "index": [1, 17], "value": 255.0, "allowed_range": [0.0, 1.0]}
    assert "inputs[1][17]" in error["message"] and "divide by 255" in error["message"]


def test_out_of_range_in_npy_names_the_index(client: TestClient) -> None:
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[0, 0, 3, 4] = -0.5
    response = client.post(
        "/v1/models/conv/encode", content=npy_bytes(x), headers={"content-type": "application/x-npy"}
    )
    error = assert_error(response, 422, "value_out_of_range")
    assert error["details"]["index"] == [0, 0, 3, 4] and error["details"]["field"] == "body"


def test_non_finite_in_npy_is_422(client: TestClient) -> None:
    x = np.zeros((1, 784), np.float32)
    x[0, 5] = np.nan
    response = client.post("/v1/encode", content=npy_bytes(x), headers={"content-type": "application/x-npy"})
    error = assert_error(response, 422, "non_finite_value")
    assert error["details"]["index"] == [0, 5]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_json_is_422(client: TestClient, token: bytes) -> None:
    body = b'{"inputs": [[0.5, ' + token + b"]]}"
    response = client.post("/v1/models/lstm/encode", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "non_finite_value")


@pytest.mark.parametrize(
    ("value", "kind"), [(True, "a boolean"), ("0.5", "a string"), (None, "null"), ({"a": 1}, "an object")]
)
def test_non_numbers_are_422_with_index(client: TestClient, value: object, kind: str) -> None:
    rows = digits(2)
    rows[1][3] = value  # type: ignore[call-overload]
    error = assert_error(client.post("/v1/encode", json={"inputs": rows}), 422, "invalid_input")
    assert error["details"]["index"] == [1, 3] and kind in error["message"]


def test_ragged_is_422_with_index(client: TestClient) -> None:
    rows = digits(3)
    rows[2] = rows[2][:-1]
    error = assert_error(client.post("/v1/encode", json={"inputs": rows}), 422, "invalid_input")
    assert error["details"]["index"] == [2] and "ragged" in error["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": []}, "empty batch"),
        ({"inputs": [0.5] * 784}, "must be a batch"),
        ({}, "missing field"),
        ({"inputs": [[0.5] * 784], "extra": 1}, "unknown field"),
        ([[0.5] * 784], "JSON object"),
        ({"inputs": [[0.5] * 783]}, "takes [784]"),
        ({"inputs": "abc"}, "must be a list"),
    ],
)
def test_bad_json_bodies_are_422(client: TestClient, body: object, fragment: str) -> None:
    error = assert_error(client.post("/v1/encode", json=body), 422)
    assert fragment in error["message"], error


def test_wrong_latent_shape_is_422(client: TestClient) -> None:
    error = assert_error(client.post("/v1/decode", json={"inputs": [[0.0] * 31]}), 422, "invalid_input")
    assert "[32]" in error["message"]


def test_too_short_series_and_too_small_image_are_422(client: TestClient) -> None:
    error = assert_error(client.post("/v1/models/lstm/encode", json={"inputs": [[[0.0] * 6]]}), 422)
    assert "at least 2" in error["message"]
    error = assert_error(client.post("/v1/models/denoise/denoise", json={"inputs": [[[0.0] * 3] * 3]}), 422)
    assert "at least 4" in error["message"]
    data = png_bytes(np.zeros((3, 9), np.uint8))
    assert_error(client.post("/v1/models/denoise/denoise", files={"file": ("s.png", data, "image/png")}), 422)


def test_bad_query_option_is_422_in_our_shape(client: TestClient) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8))
    response = client.post("/v1/encode?preprocess=sharpen", files={"file": ("a.png", data, "image/png")})
    error = assert_error(response, 422, "invalid_request")
    assert "preprocess" in error["message"]


def test_unexpected_form_field_is_422(client: TestClient) -> None:
    data = png_bytes(np.zeros((28, 28), np.uint8))
    response = client.post("/v1/encode", files={"file": ("a.png", data, "image/png")}, data={"preprocess": "mnist"})
    error = assert_error(response, 422, "invalid_input")
    assert "query string" in error["message"]


def test_next_request_after_errors_still_succeeds(client: TestClient) -> None:
    client.post("/v1/encode", content=b"{", headers={"content-type": "application/json"})
    client.post("/v1/encode", content=b"\x93NUMPY", headers={"content-type": "application/x-npy"})
    assert client.post("/v1/encode", json={"inputs": digits()}).status_code == 200


# -- no request left for the cycle collector --------------------------------------------------------------------
CYCLE_CASES = [
    ("/v1/encode", "application/json", b'{"inputs": [[0.5, 0.5, "x"]]}', 422),
    ("/v1/encode", "application/json", b'{"inputs": [[0.5, 0.5], [0.5]]}', 422),
    ("/v1/encode", "application/json", b'{"inputs": [[0.1, 0.2,]]}', 400),
    ("/v1/encode", "application/x-npy", b"hello world", 400),
    ("/v1/models/denoise/denoise", "image/png", b"not a png at all", 415),
    ("/v1/encode", "text/plain", b"{}", 415),
    ("/v1/models/nope/encode", "application/json", b'{"inputs": [[0.5]]}', 404),
    (
        "/v2/models/dense/infer",
        "application/json",
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL"}]}',
        400,
    ),
    (
        "/v1/encode",
        "application/json",
        b'{"inputs": [' + b",".join([b"[" + b",".join([b"0.5"] * 784) + b"]"] * 2) + b"]}",
        200,
    ),
    (  # over 64 KiB: parsed in the offload pool, the error comes back from a worker thread
        "/v1/encode",
        "application/json",
        b'{"inputs": [' + b",".join([b"[" + b",".join([b"0.5"] * 784) + b"]"] * 40) + b", [true]]}",
        422,
    ),
]


def test_no_request_leaves_a_reference_cycle_behind() -> None:
    """Answers, good and bad, leave nothing of the request for the cyclic collector (frames of app code,
    exceptions, the request): a cycle keeps the body alive until a full collection, and a client that repeats
    a bad upload of the maximum size would hold that much memory per request (a traceback kept by a future
    in the offload pool, a recursive closure, a frame holding the exception it raised did)."""
    import gc

    from app.core.errors import ServiceError

    with make_client() as client:
        for path, ctype, body, status in CYCLE_CASES:  # warm every path first
            assert client.post(path, content=body, headers={"content-type": ctype}).status_code == status, path
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(3):
                for path, ctype, body, _status in CYCLE_CASES:
                    client.post(path, content=body, headers={"content-type": ctype})
            gc.collect()
            ours = [
                repr(o)[:120]
                for o in gc.garbage
                if isinstance(o, ServiceError)
                or (isinstance(o, types.FrameType) and "/app/" in o.f_code.co_filename.replace("\\", "/"))
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert ours == []
