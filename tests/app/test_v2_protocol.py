"""The Open Inference Protocol's raw REST bodies over the wire (plain httpx) against a real uvicorn process:
JSON data flat and nested, the binary tensor data extension with and without a Content-Type, malformed headers
and sizes, datatype checks, id echo, the protocol's `{"error": "..."}` shape on every `/v2` failure, and 503 when
a model did not load.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from app.api.v2.schemas import InferenceResponse, ModelConfigResponse, ModelMetadataResponse
from tests.app.conftest import CARDS, TOLERANCE, Reference, assert_error, sample_input
from tests.app.live import LiveServer, running, start

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running(models_dir, tmp_path_factory.mktemp("v2-protocol") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base, timeout=60) as client:
        yield client


def binary_body(
    inputs: list[tuple[str, np.ndarray]], extra: dict[str, Any] | None = None, datatype: str = "FP32"
) -> tuple[bytes, int]:
    """A binary-extension request: the JSON header, then each tensor's bytes; and the header's length."""
    header = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": datatype, "parameters": {"binary_data_size": x.nbytes}}
            for name, x in inputs
        ],
        **(extra or {}),
    }
    head = orjson.dumps(header)
    return head + b"".join(x.tobytes() for _, x in inputs), len(head)


def split_response(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and every output (binary or JSON) as float32 arrays."""
    length = response.headers.get(HEADER)
    header = json.loads(response.content[: int(length)] if length else response.content)
    InferenceResponse.model_validate(header)
    arrays: dict[str, np.ndarray] = {}
    offset = int(length) if length else len(response.content)
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(response.content, dtype="<f4", count=size // 4, offset=offset)
            offset += size
        else:
            data = np.asarray(output["data"], dtype=np.float32)
        arrays[output["name"]] = data.reshape(output["shape"])
    assert offset == len(response.content)
    return header, arrays


def assert_v2_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The protocol's error shape: exactly `{"error": "<message>"}`, with the given status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return str(body["error"])


def test_flat_and_nested_json_data_give_the_same_numbers(http: httpx.Client, reference: Reference) -> None:
    x = sample_input("conv", "encode", batch=2)  # [2, 1, 28, 28]
    want = reference.run("conv", "encoder", x)["z"]
    results = []
    for data in (x.reshape(-1).tolist(), x.tolist()):
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": data}]}
        response = http.post("/v2/models/conv.encoder/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json" and HEADER not in response.headers
        header, arrays = split_response(response)
        assert header["outputs"][0]["shape"] == list(want.shape)
        results.append(arrays["z"])
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], want, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/json"])
def test_binary_in_and_out_with_any_or_no_content_type(
    http: httpx.Client, reference: Reference, content_type: str | None
) -> None:
    x = sample_input("dense", "reconstruct", batch=3)
    body, length = binary_body([("x", x)], {"parameters": {"binary_data_output": True}})
    headers = {HEADER: str(length)}
    if content_type:
        headers["content-type"] = content_type
    response = http.post("/v2/models/dense/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert int(response.headers["content-length"]) == len(response.content)
    header, arrays = split_response(response)
    assert header["model_name"] == "dense" and header["model_version"] == CARDS["dense"]["version"]
    assert [o["name"] for o in header["outputs"]] == ["reconstruction", "score"]
    want = reference.run("dense", "full", x)
    for name in ("reconstruction", "score"):
        np.testing.assert_allclose(arrays[name], want[name], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("content_type", ["text/csv", "multipart/form-data; boundary=x", "image/png"])
def test_a_wrong_content_type_on_infer_is_415_and_the_next_request_works(http: httpx.Client, content_type: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
    response = http.post("/v2/models/dense/infer", content=json.dumps(body), headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and content_type.split(";")[0] in message
    assert http.post("/v2/models/dense/infer", content=json.dumps(body)).status_code == 200  # none is fine
    form = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends with a JSON body
    assert http.post("/v2/models/dense/infer", content=json.dumps(body), headers=form).status_code == 200


def test_binary_in_json_out_and_per_output_override(http: httpx.Client, reference: Reference) -> None:
    x = sample_input("dense", "encode", batch=2)
    want = reference.run("dense", "encoder", x)["z"]
    body, length = binary_body([("x", x)])  # no binary_data_output: JSON out
    response = http.post("/v2/models/dense.encoder/infer", content=body, headers={HEADER: str(length)})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    np.testing.assert_allclose(split_response(response)[1]["z"], want, rtol=0, atol=TOLERANCE)
    # binary_data_output asks for binary, the output's own binary_data=false wins.
    extra = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "z", "parameters": {"binary_data": False}}],
    }
    body, length = binary_body([("x", x)], extra)
    response = http.post("/v2/models/dense.encoder/infer", content=body, headers={HEADER: str(length)})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "data" in response.json()["outputs"][0]


def test_request_id_is_echoed(http: httpx.Client) -> None:
    x = sample_input("dense", "decode", batch=1)
    body = {"id": "my-id-42", "inputs": [{"name": "z", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    response = http.post("/v2/models/dense.decoder/versions/" + CARDS["dense"]["version"] + "/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "my-id-42"
    del body["id"]
    response = http.post("/v2/models/dense.decoder/infer", json=body)
    assert response.status_code == 200 and "id" not in response.json()


@pytest.mark.parametrize(
    ("header_value", "fragment"),
    [
        ("abc", "must be the byte length of the JSON header"),
        ("0", "is 0 but the body holds"),
        ("-5", "must be the byte length"),
        ("too-long", "but the body holds"),
        ("short", "is not valid JSON"),
    ],
)
def test_bad_header_length(http: httpx.Client, header_value: str, fragment: str) -> None:
    x = sample_input("dense", "encode", batch=1)
    body, length = binary_body([("x", x)])
    value = {"too-long": str(len(body) + 1), "short": str(length - 3)}.get(header_value, header_value)
    response = http.post("/v2/models/dense.encoder/infer", content=body, headers={HEADER: value})
    assert_v2_error(response, 400, fragment)


def test_binary_sizes_must_add_up(http: httpx.Client) -> None:
    x = sample_input("dense", "encode", batch=2)
    body, length = binary_body([("x", x)])
    response = http.post("/v2/models/dense.encoder/infer", content=body + b"\0" * 8, headers={HEADER: str(length)})
    assert_v2_error(response, 400, "binary data after the JSON header", "add up to")
    header = orjson.loads(body[:length])
    header["inputs"][0]["parameters"]["binary_data_size"] = x.nbytes - 4
    head = orjson.dumps(header)
    response = http.post("/v2/models/dense.encoder/infer", content=head + x.tobytes(), headers={HEADER: str(len(head))})
    assert_v2_error(response, 400, f"binary_data_size is {x.nbytes - 4} bytes", f"takes {x.nbytes}")
    # binary_data_size without the header: the body is all JSON, so the tensor is missing.
    response = http.post("/v2/models/dense.encoder/infer", content=body[:length])
    assert_v2_error(response, 400, "no Inference-Header-Content-Length header")


def test_datatype_and_data_checks(http: httpx.Client) -> None:
    x = sample_input("dense", "encode", batch=1)
    url = "/v2/models/dense.encoder/infer"

    def tensor(**fields: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": x.ravel().tolist(), **fields}]}

    assert_v2_error(http.post(url, json=tensor(datatype="FP64")), 400, "datatype FP64 does not match", "takes FP32")
    body, length = binary_body([("x", x.astype(np.float64))], datatype="FP64")
    assert_v2_error(http.post(url, content=body, headers={HEADER: str(length)}), 400, "datatype FP64 does not match")
    assert_v2_error(http.post(url, json=tensor(datatype="BYTES")), 400, "datatype 'BYTES' is not supported")
    assert_v2_error(http.post(url, json=tensor(data=[True] * 784)), 400, "booleans", "FP32")
    assert_v2_error(http.post(url, json=tensor(data=["a"] * 784)), 400, "data[0] is a string")
    assert_v2_error(http.post(url, json=tensor(data=[0.5] * 783)), 400, "783 values", "shape [1, 784] needs 784")
    assert_v2_error(http.post(url, json=tensor(data=[[0.5] * 392] * 2)), 400, "nested data has shape [2, 392]")
    assert_v2_error(http.post(url, json=tensor(data=[1e39] + [0.0] * 783)), 400, "does not fit in FP32")
    assert_v2_error(http.post(url, json=tensor(shape=[1, -784])), 400, "negative size")
    assert_v2_error(http.post(url, json=tensor(shape=[1, 28, 28])), 422, "shape [1, 28, 28], expected [-1, 784]")
    assert_v2_error(http.post(url, json=tensor(data=[2.0] * 784)), 422, "x[0][0] = 2", "outside the allowed range")
    nan = np.full((1, 784), np.nan, dtype=np.float32)
    body, length = binary_body([("x", nan)])
    assert_v2_error(http.post(url, content=body, headers={HEADER: str(length)}), 422, "values must be finite")
    assert_v2_error(http.post(url, json={"inputs": []}), 400, "inputs must be a non-empty list")
    assert_v2_error(http.post(url, json={**tensor(), "input": 1}), 400, "unknown field(s) ['input']")
    assert_v2_error(http.post(url, json={"inputs": tensor()["inputs"] * 2}), 400, "input 'x' is given twice")
    assert_v2_error(http.post(url, json={**tensor(), "id": 7}), 400, "id must be a string")
    extra = {"outputs": [{"name": "z", "parameters": {"classification": 3}}]}
    assert_v2_error(http.post(url, json={**tensor(), **extra}), 400, "classification extension is not offered")
    assert_v2_error(http.post(url, content=b"[1, 2]"), 400, "must be a JSON object")
    assert_v2_error(http.post(url, content=b""), 400, "not valid JSON")


def test_errors_on_v2_routes_have_the_protocol_shape(live: LiveServer, http: httpx.Client) -> None:
    assert_v2_error(http.get("/v2/no/such/route"), 404, "no route GET /v2/no/such/route")
    assert_v2_error(http.delete("/v2/models/dense"), 405, "method DELETE not allowed")
    assert_v2_error(http.get("/v2/models/dense.encoder/versions/999"), 404, "no version '999'")
    assert_v2_error(http.get("/v2/models/dense.sideways/config"), 404, "unknown model 'dense.sideways'")
    assert_v2_error(http.post("/v2/models/nope/infer", content=b"{}"), 404, "unknown model 'nope'")
    too_many = np.zeros((4097, 32), dtype=np.float32)  # AE_MAX_BATCH_ROWS is 4096 by default
    body, length = binary_body([("z", too_many)])
    assert_v2_error(
        http.post("/v2/models/dense.decoder/infer", content=body, headers={HEADER: str(length)}), 413, "at most 4096"
    )
    huge = b"{" + b" " * (96 * 1024 * 1024) + b"}"  # over AE_MAX_BODY_BYTES (96 MiB)
    assert_v2_error(http.post("/v2/models/dense.encoder/infer", content=huge), 413)
    # /v1 keeps its own shape.
    assert_error(http.get("/v1/no/such/route"), 404, "not_found")


def test_metadata_and_config_bodies_fit_their_schemas(http: httpx.Client) -> None:
    metadata = http.get("/v2/models/lstm.encoder").json()
    ModelMetadataResponse.model_validate(metadata)
    time_axis = CARDS["lstm"]["graphs"]["encoder"]["inputs"][0]["shape"]
    assert metadata["inputs"][0]["shape"] == [d if isinstance(d, int) else -1 for d in time_axis]
    config = http.get("/v2/models/conv.full/config").json()
    ModelConfigResponse.model_validate(config)
    assert config["input"][0]["dims"] == CARDS["conv"]["graphs"]["full"]["inputs"][0]["shape"][1:]
    assert http.get("/v2/models/conv.full/versions/" + CARDS["conv"]["version"] + "/config").json() == config


def test_openapi_documents_the_v2_routes(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    routes = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats", "/v2/models/{name}/stats")
    for path in (*routes, "/v2/models/{name}", "/v2/models/{name}/ready"):
        assert "get" in paths[path], path
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        assert "get" in paths[f"{prefix}/config"]
        infer = paths[f"{prefix}/infer"]["post"]
        content = infer["requestBody"]["content"]
        assert content["application/json"]["examples"] and "application/octet-stream" in content
        assert infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("V2ErrorResponse")
        assert content["application/json"]["schema"]["properties"]["inputs"]["items"]["properties"]["datatype"]
    # Every reference resolves (nested request models are inlined, not left pointing at missing components).
    refs = set(re.findall(r'"\$ref":\s*"([^"]+)"', json.dumps(spec)))
    schemas = spec["components"]["schemas"]
    assert refs and all(r.startswith("#/components/schemas/") and r.rsplit("/", 1)[-1] in schemas for r in refs)


def test_v2_requests_are_counted_under_their_route(http: httpx.Client) -> None:
    x = sample_input("dense", "encode", batch=1)
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert http.post("/v2/models/dense.encoder/infer", json=body).status_code == 200
    lines = http.get("/metrics").text.splitlines()
    assert any(
        line.startswith("ae_http_requests_total{")
        and 'route="/v2/models/{name}/infer"' in line
        and 'model="dense"' in line
        and 'status="200"' in line
        for line in lines
    )


def test_not_ready_is_503_in_the_protocol_shape(
    model_copy: Callable[..., Path], tmp_path: Path, reference: Reference
) -> None:
    """A model that fails to load: the server is live but not ready, that model answers 503, the others serve."""
    root = model_copy("dense", "dense-shallow")
    card_path = root / "dense-shallow" / "card.json"
    card = json.loads(card_path.read_text())
    card["graphs"]["encoder"]["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    server = start(root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base, timeout=30) as http:
            assert http.get("/v2/health/live").json() == {"live": True}
            assert_v2_error(http.get("/v2/health/ready"), 503, "not ready", "dense-shallow", "sha256")
            assert_v2_error(http.get("/v2/models/dense-shallow.encoder/ready"), 503, "not available", "sha256")
            assert_v2_error(http.get("/v2/models/dense-shallow/config"), 503, "not available")
            assert_v2_error(http.post("/v2/models/dense-shallow/infer", content=b"{}"), 503, "not available")
            assert http.get("/v2/models/dense/ready").json() == {"name": "dense", "ready": True}
            x = sample_input("dense", "encode", batch=1)
            body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": x.ravel().tolist()}]}
            response = http.post("/v2/models/dense.encoder/infer", json=body)
            assert response.status_code == 200, response.text
            got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
            np.testing.assert_allclose(got, reference.run("dense", "encoder", x)["z"], rtol=0, atol=TOLERANCE)
    finally:
        assert server.stop() == 0


def test_v2_and_v1_requests_share_the_engines_batches(models_dir: Path, tmp_path: Path, reference: Reference) -> None:
    """One path for both protocols: concurrent /v2 and /v1 encodes of one graph are merged into the same ONNX
    Runtime call by the engine's batcher (its metrics label such a call `mixed`), and each gets its own rows."""
    env = {"AE_BATCH_MAX_DELAY_MS": "300", "AE_BATCH_MAX_ROWS": "64"}  # hold the batch open long enough to merge
    with running(models_dir, tmp_path / "server.log", env) as server:
        xs = [sample_input("dense", "encode", batch=2, seed=40 + i) for i in range(4)]

        async def send_all() -> list[np.ndarray]:
            async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:

                async def v1(x: np.ndarray) -> np.ndarray:
                    response = await http.post("/v1/models/dense/encode", json={"inputs": x.tolist()})
                    assert response.status_code == 200, response.text
                    return np.asarray(response.json()["latent"], dtype=np.float32)

                async def v2(x: np.ndarray) -> np.ndarray:
                    body, length = binary_body([("x", x)], {"parameters": {"binary_data_output": True}})
                    response = await http.post(
                        "/v2/models/dense.encoder/infer", content=body, headers={HEADER: str(length)}
                    )
                    assert response.status_code == 200, response.text
                    return split_response(response)[1]["z"]

                return list(await asyncio.gather(v1(xs[0]), v2(xs[1]), v1(xs[2]), v2(xs[3])))

        results = asyncio.run(send_all())
        for x, got in zip(xs, results, strict=True):
            np.testing.assert_allclose(got, reference.run("dense", "encoder", x)["z"], rtol=0, atol=TOLERANCE)
        metrics = httpx.get(f"{server.base}/metrics", timeout=10).text.splitlines()
        mixed = [
            line
            for line in metrics
            if line.startswith("ae_inference_batch_size_count{")
            and 'endpoint="mixed"' in line
            and 'model="dense"' in line
            and 'graph="encoder"' in line
        ]
        assert mixed and float(mixed[0].rsplit(" ", 1)[1]) >= 1, "\n".join(m for m in metrics if "batch_size" in m)
