"""The benchmark ceilings `/bench/noop-raw` and `/bench/noop-parse`: off by default, out of the schema, echo."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import assert_error, make_client, npy_bytes, sample_input


@pytest.fixture(scope="module")
def bench_client() -> Iterator[TestClient]:
    with make_client(bench_endpoints=True) as client:
        yield client


def test_off_by_default() -> None:
    """Production settings do not expose the ceilings."""
    with make_client() as client:
        response = client.post("/bench/noop-raw", content=b"{}", headers={"content-type": "application/json"})
        assert_error(response, 404)


def test_ceilings_echo_and_stay_out_of_the_schema(bench_client: TestClient) -> None:
    rows = sample_input("dense", "encode", batch=2)
    json_body = orjson.dumps({"inputs": rows.tolist()})
    npy_body = npy_bytes(rows)
    paths = bench_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/bench")]
    for route in ("/bench/noop-raw", "/bench/noop-parse"):
        for body, ctype in ((json_body, "application/json"), (npy_body, "application/x-npy")):
            response = bench_client.post(route, content=body, headers={"content-type": ctype})
            assert response.status_code == 200, response.text
            assert response.content == body
            assert response.headers["content-type"].startswith(ctype)


@pytest.mark.parametrize(
    ("body", "ctype", "status", "error_type"),
    [
        (b'{"inputs": [[1, 2], [3]]}', "application/json", 422, "invalid_input"),
        (b'{"inputs": ', "application/json", 400, "invalid_json"),
        (b"\x93NUMPY garbage", "application/x-npy", 400, "invalid_npy"),
        (b"abc", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_noop_parse_refuses_what_v1_refuses(
    bench_client: TestClient, body: bytes, ctype: str, status: int, error_type: str
) -> None:
    """The parsing ceiling really parses: a body /v1 would refuse is refused with the same error."""
    raw = bench_client.post("/bench/noop-raw", content=body, headers={"content-type": ctype})
    assert raw.status_code == 200 and raw.content == body
    error = assert_error(bench_client.post("/bench/noop-parse", content=body, headers={"content-type": ctype}), status)
    assert error["type"] == error_type
