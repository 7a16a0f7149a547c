"""Hostile input against a real uvicorn process on 127.0.0.1 (`python -m app`) with small limits.

Every case asserts the status, the error shape of the route (ours on /v1, `{"error": "..."}` on /v2), and that
the server still answers a valid request afterwards. The limits are set small here (environment below) so that
each case is cheap; the defaults are documented in app/README.md.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import npy_bytes, png_bytes
from tests.app.live import LiveServer, raw_request, read_response, running

MAX_BODY = 256 * 1024
BODY_TIMEOUT = 2.0
HEAD_TIMEOUT = 2.0
MAX_HEAD = 16 * 1024
MAX_IN_FLIGHT = 4
HOSTILE_ENV = {
    "AE_MAX_BODY_BYTES": str(MAX_BODY),
    "AE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "AE_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
    "AE_MAX_HEAD_BYTES": str(MAX_HEAD),
    "AE_MAX_IN_FLIGHT_REQUESTS": str(MAX_IN_FLIGHT),
    "AE_RETRY_AFTER_SECONDS": "3",
    "AE_MAX_BATCH_ROWS": "16",
    "AE_MAX_SEQUENCE_LENGTH": "500",
    "AE_MAX_IMAGE_PIXELS": "250000",
    "AE_MAX_IMAGE_SIDE": "1000",
    "AE_MAX_UPLOAD_FILES": "4",
    "AE_MAX_FORM_FIELDS": "2",
    "AE_MAX_FORM_FIELD_BYTES": "1024",
    "AE_LOG_LEVEL": "warning",
}
JSON_CT = {"content-type": "application/json"}
NPY_CT = {"content-type": "application/x-npy"}
DIGIT = [[0.5] * 784]
VALID = json.dumps({"inputs": DIGIT}).encode()


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running(models_dir, log, HOSTILE_ENV) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        yield client


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> str:
    """The route's error shape with the status; returns the message."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    if response.request.url.path.startswith("/v2/"):
        assert isinstance(body["error"], str) and body["error"]
        return str(body["error"])
    error = body["error"]
    assert set(error) == {"type", "message", "details"} and error["message"], error
    if type_ is not None:
        assert error["type"] == type_, error
    assert response.headers.get("x-request-id")
    return str(error["message"])


def assert_serves(base: str) -> None:
    """A valid request succeeds (fresh connection: the hostile one may have been closed)."""
    response = httpx.post(f"{base}/v1/encode", content=VALID, headers=JSON_CT, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["latent"][0]) == 32


# -- hostile bodies -----------------------------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with a tiny (wrong) pixel stream: a decompression bomb's
    header, to be refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and first image claim `width` x `height`, with one pixel of data."""
    size = struct.pack("<HH", width, height)
    descriptor = b"," + struct.pack("<HH", 0, 0) + size + b"\x00"
    return b"GIF89a" + size + b"\x00\x00\x00" + descriptor + b"\x02\x02\x4c\x01\x00" + b";"


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def image_bytes(mode: str = "L", fmt: str = "PNG", size: tuple[int, int] = (28, 28), **save: Any) -> bytes:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(gray).convert(mode) if mode != "I;16" else Image.fromarray(gray.astype(np.uint16) * 257)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(20, 36), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def npy_lying_header() -> bytes:
    data = npy_bytes(np.zeros((1, 784), np.float32))
    return data.replace(b"(1, 784)", b"(9, 784)")


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"0.5" + b"]" * depth + b"}"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostileboundary") -> tuple[bytes, str]:
    """A multipart body from (name, filename or None, content) parts, and its Content-Type."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def files(n: int) -> tuple[bytes, str]:
    return multipart([("file", f"{i}.png", png_bytes(np.zeros((28, 28), np.uint8))) for i in range(n)])


@dataclass(frozen=True)
class Case:
    """One hostile request and the answer it must get."""

    path: str
    body: bytes | Callable[[], bytes] | Callable[[], tuple[bytes, str]]
    status: int
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    fragment: str | None = None  # expected in the message


def _body_and_headers(case: Case) -> tuple[bytes, dict[str, str]]:
    headers = dict(case.headers)
    body = case.body() if callable(case.body) else case.body
    if isinstance(body, tuple):
        body, content_type = body
        headers["content-type"] = content_type
    return body, headers


IMG = "/v1/models/conv/encode"
V2_INFER = "/v2/models/dense.encoder/infer"


def v2_body(data: list[Any] | None = None, datatype: str = "FP32") -> bytes:
    tensor = {"name": "x", "shape": [1, 784], "datatype": datatype, "data": [0.5] * 784 if data is None else data}
    return json.dumps({"inputs": [tensor]}).encode()


CASES: dict[str, Case] = {
    # body size, encodings
    "declared-length-over-limit": Case("/v1/encode", b"[" * (MAX_BODY + 1), 413, "payload_too_large", JSON_CT),
    "gzip-bomb": Case(
        "/v1/encode",
        lambda: gzip.compress(b'{"inputs": [[' + b" " * (32 * 1024 * 1024) + b"]]}"),
        413,
        "payload_too_large",
        {**JSON_CT, "content-encoding": "gzip"},
        fragment="decompressed",
    ),
    "deflate-bomb": Case(
        "/v1/encode",
        lambda: zlib.compress(b" " * (16 * 1024 * 1024)),
        413,
        "payload_too_large",
        {**JSON_CT, "content-encoding": "deflate"},
    ),
    "brotli-encoding-415": Case(
        "/v1/encode", VALID, 415, "unsupported_media_type", {**JSON_CT, "content-encoding": "br"}
    ),
    "stacked-encodings-415": Case(
        "/v1/encode", VALID, 415, "unsupported_media_type", {**JSON_CT, "content-encoding": "gzip, gzip"}
    ),
    "corrupt-gzip": Case(
        "/v1/encode",
        b"\x1f\x8b\x08\x00garbage-not-deflate",
        400,
        "invalid_encoding",
        {**JSON_CT, "content-encoding": "gzip"},
    ),
    "truncated-gzip": Case(
        "/v1/encode",
        lambda: gzip.compress(VALID)[:-12],
        400,
        "invalid_encoding",
        {**JSON_CT, "content-encoding": "gzip"},
    ),
    "v2-body-over-limit": Case("/v2/models/dense/infer", b" " * (MAX_BODY + 10), 413, None, JSON_CT),
    "v2-gzip-bomb": Case(
        "/v2/models/dense/infer",
        lambda: gzip.compress(b" " * (8 * 1024 * 1024), 1),
        413,
        None,
        {**JSON_CT, "content-encoding": "gzip"},
    ),
    # content types
    "missing-content-type": Case("/v1/encode", VALID, 415, "unsupported_media_type", fragment="missing Content-Type"),
    "text-plain": Case("/v1/encode", VALID, 415, "unsupported_media_type", {"content-type": "text/plain"}),
    "xml": Case("/v1/encode", b"<inputs/>", 415, "unsupported_media_type", {"content-type": "application/xml"}),
    # JSON values
    "json-nan": Case("/v1/encode", b'{"inputs": [[NaN, 0.5]]}', 422, "non_finite_value", JSON_CT),
    "json-infinity": Case("/v1/encode", b'{"inputs": [[0.5, Infinity]]}', 422, "non_finite_value", JSON_CT),
    "json-minus-infinity": Case("/v1/encode", b'{"inputs": [[-Infinity]]}', 422, "non_finite_value", JSON_CT),
    "json-1e999": Case("/v1/models/lstm/encode", b'{"inputs": [[[1e999, 0, 0, 0, 0, 0]]]}', 422, None, JSON_CT),
    "json-string-nan": Case(
        "/v1/encode", b'{"inputs": [[0.5, "nan"]]}', 422, "invalid_input", JSON_CT, fragment="inputs[0][1]"
    ),
    "json-boolean": Case(
        "/v1/encode", b'{"inputs": [[0.5, true]]}', 422, "invalid_input", JSON_CT, fragment="inputs[0][1] is a boolean"
    ),
    "json-null": Case("/v1/encode", b'{"inputs": [[null]]}', 422, "invalid_input", JSON_CT, fragment="inputs[0][0]"),
    "json-deeply-nested": Case("/v1/encode", lambda: nested(100_000), 400, "invalid_json", JSON_CT),
    "json-nested-past-numpy": Case("/v1/encode", lambda: nested(900), 422, "invalid_input", JSON_CT, fragment="deep"),
    "json-huge-integer": Case("/v1/encode", b'{"inputs": [[1' + b"0" * 400 + b"]]}", 422, "non_finite_value", JSON_CT),
    "json-empty-body": Case("/v1/encode", b"", 400, "invalid_json", JSON_CT),
    "json-not-utf8": Case("/v1/encode", b'{"inputs": [[0.5\xff\xfe]]}', 400, "invalid_json", JSON_CT),
    "json-empty-batch": Case("/v1/encode", b'{"inputs": []}', 422, "invalid_input", JSON_CT, fragment="empty batch"),
    "json-too-many-rows": Case(
        "/v1/encode", lambda: json.dumps({"inputs": [[0.5] * 784] * 17}).encode(), 413, "payload_too_large", JSON_CT
    ),
    "json-too-many-latent-codes": Case(
        "/v1/decode", lambda: json.dumps({"inputs": [[0.0] * 32] * 17}).encode(), 413, "payload_too_large", JSON_CT
    ),
    "npy-too-many-rows": Case(
        "/v1/encode", lambda: npy_bytes(np.zeros((17, 784), np.float32)), 413, "payload_too_large", NPY_CT
    ),
    "json-series-too-long": Case(
        "/v1/models/lstm/encode", lambda: json.dumps({"inputs": [[[0.0] * 6] * 501]}).encode(), 413, None, JSON_CT
    ),
    "json-wrong-shape": Case("/v1/encode", b'{"inputs": [[0.5, 0.5]]}', 422, "invalid_input", JSON_CT),
    "json-ragged": Case(
        "/v1/models/lstm/encode",
        b'{"inputs": [[[0,0,0,0,0,0],[0,0]]]}',
        422,
        "invalid_input",
        JSON_CT,
        fragment="ragged",
    ),
    "json-inputs-object": Case("/v1/encode", b'{"inputs": {"a": 1}}', 422, "invalid_input", JSON_CT),
    # .npy
    "npy-pickled-object": Case("/v1/encode", pickled_npy, 422, None, NPY_CT),
    "npy-header-lies": Case("/v1/encode", npy_lying_header, 400, "invalid_npy", NPY_CT, fragment="header says"),
    "npy-float64": Case("/v1/encode", lambda: npy_bytes(np.zeros((1, 784))), 422, "invalid_input", NPY_CT),
    "npy-fortran": Case(
        "/v1/encode", lambda: npy_bytes(np.asfortranarray(np.zeros((2, 784), np.float32))), 422, None, NPY_CT
    ),
    "npy-huge-shape-claim": Case(
        "/v1/encode",
        lambda: npy_bytes(np.zeros((1, 784), np.float32)).replace(b"(1, 784)", b"(10, 99999999999)"),
        400,
        None,
        NPY_CT,
    ),
    "npy-nan": Case(
        "/v1/encode", lambda: npy_bytes(np.full((1, 784), np.nan, np.float32)), 422, "non_finite_value", NPY_CT
    ),
    # images
    "pdf": Case(IMG, b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, None, {"content-type": "image/png"}),
    "eps": Case(IMG, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n", 415, None, {"content-type": "image/png"}),
    "fits": Case(IMG, (b"SIMPLE  =                    T" + b" " * 50) * 36, 415, None, {"content-type": "image/png"}),
    "tiff": Case(IMG, lambda: image_bytes(fmt="TIFF"), 415, "unsupported_media_type", {"content-type": "image/tiff"}),
    "svg": Case(IMG, b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, None, {"content-type": "image/svg+xml"}),
    "png-bomb-header": Case(
        IMG, lambda: png_header_only(60_000, 60_000), 413, "payload_too_large", {"content-type": "image/png"}
    ),
    "gif-bomb-header": Case(
        IMG, lambda: gif_header_only(65_535, 65_535), 413, "payload_too_large", {"content-type": "image/gif"}
    ),
    "png-side-over-limit": Case(
        IMG, lambda: png_header_only(1001, 10), 413, "payload_too_large", {"content-type": "image/png"}
    ),
    "truncated-png": Case(IMG, lambda: image_bytes()[:60], 400, "invalid_image", {"content-type": "image/png"}),
    "zero-byte-image": Case(IMG, b"", 400, "invalid_image", {"content-type": "image/png"}),
    "text-claiming-png": Case(IMG, b"hello, world", 415, None, {"content-type": "image/png"}),
    # multipart
    "multipart-too-many-files": Case(IMG, lambda: files(5), 413, "payload_too_large"),
    "multipart-too-many-fields": Case(
        IMG, lambda: multipart([("a", None, b"1"), ("b", None, b"2"), ("c", None, b"3")]), 400, "bad_request"
    ),
    "multipart-field-too-big": Case(IMG, lambda: multipart([("a", None, b"x" * 2000)]), 400, "bad_request"),
    "multipart-file-over-body-limit": Case(
        IMG, lambda: multipart([("file", "big.png", b"\0" * (MAX_BODY + 1))]), 413, "payload_too_large"
    ),
    "multipart-no-boundary": Case(IMG, VALID, 400, "bad_request", {"content-type": "multipart/form-data"}),
    "multipart-garbage": Case(
        IMG,
        b"--b\r\nnot a header line\r\n\r\n",
        400,
        "bad_request",
        {"content-type": "multipart/form-data; boundary=b"},
    ),
    "multipart-part-without-name": Case(
        IMG,
        b'--b\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nxx\r\n--b--\r\n',
        400,
        "bad_request",
        {"content-type": "multipart/form-data; boundary=b"},
    ),
    "multipart-no-file": Case(IMG, lambda: multipart([("note", None, b"hi")]), 422, "invalid_input"),
    # Open Inference Protocol (errors are {"error": "<message>"})
    "v2-nan": Case(V2_INFER, lambda: v2_body().replace(b"0.5", b"NaN", 1), 400, None, JSON_CT),
    "v2-string-data": Case(V2_INFER, lambda: v2_body(data=["a"] * 784), 400, None, JSON_CT, fragment="data[0]"),
    "v2-short-data": Case(V2_INFER, lambda: v2_body(data=[0.5] * 3), 400, None, JSON_CT, fragment="784"),
    "v2-bytes-datatype": Case(V2_INFER, lambda: v2_body(datatype="BYTES"), 400, None, JSON_CT),
    "v2-deeply-nested": Case(V2_INFER, lambda: nested(5000), 400, None, JSON_CT),
    "v2-traversal": Case("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", v2_body, 404, None, JSON_CT),
    # model names and paths: looked up in the registry's list only
    "traversal-encoded": Case("/v1/models/..%2F..%2Fetc%2Fpasswd/encode", VALID, 404, None, JSON_CT),
    "traversal-dot-dot": Case("/v1/models/%2e%2e/encode", VALID, 404, "model_not_found", JSON_CT),
    "traversal-null-byte": Case("/v1/models/dense%00.onnx/encode", VALID, 404, "model_not_found", JSON_CT),
    "traversal-detail": Case("/v1/models/..%2Fdense%2Fcard.json", b"", 404, None, method="GET"),
    "model-name-10k-chars": Case("/v1/models/" + "a" * 10_000 + "/encode", VALID, 404, "model_not_found", JSON_CT),
    "model-name-overlong-utf8": Case("/v1/models/%C0%AE%C0%AE/encode", VALID, 404, None, JSON_CT),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request(server: LiveServer, http: httpx.Client, name: str) -> None:
    case = CASES[name]
    body, headers = _body_and_headers(case)
    try:
        response = http.request(case.method, case.path, content=body, headers=headers)
    except httpx.TransportError:
        # The server answered early and closed while the client still sent (413 before reading): read it on a
        # connection that sends only the head.
        pytest.fail(f"{name}: connection failed before an answer")
    message = assert_error(response, case.status, case.type)
    if case.fragment:
        assert case.fragment in message, message
    assert "Traceback" not in response.text
    assert_serves(server.base)


def test_v2_infer_accepts_a_missing_content_type(server: LiveServer) -> None:
    """The protocol's clients may send no Content-Type: V2 infer reads JSON then (unlike /v1, which says 415)."""
    response = httpx.post(f"{server.base}{V2_INFER}", content=v2_body(), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 32]


def test_overlong_request_is_refused_before_the_body_is_read(server: LiveServer) -> None:
    """Content-Length over the limit: the answer comes before a single body byte is sent."""
    sock = raw_request(
        server.port,
        f"POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: {100 * MAX_BODY}\n",
    )
    with sock:
        status, headers, body = read_response(sock, timeout=10)
    assert status == 413 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["type"] == "payload_too_large"
    assert_serves(server.base)


def test_chunked_body_over_the_limit_is_413(server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(MAX_BODY // 8192 + 2):
            yield b" " * 8192

    response = httpx.post(f"{server.base}/v1/encode", content=chunks(), headers=JSON_CT, timeout=30)
    assert_error(response, 413, "payload_too_large")
    assert_serves(server.base)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),  # what some clients send as "deflate"
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_compressed_bodies_are_accepted(server: LiveServer, encoding: str, compress: Callable[[bytes], bytes]) -> None:
    plain = httpx.post(f"{server.base}/v1/encode", content=VALID, headers=JSON_CT, timeout=30)
    packed = httpx.post(
        f"{server.base}/v1/encode",
        content=compress(VALID),
        headers={**JSON_CT, "content-encoding": encoding},
        timeout=30,
    )
    assert packed.status_code == 200, packed.text
    assert packed.json()["latent"] == plain.json()["latent"]


def test_compressed_body_just_under_the_limit_is_accepted(server: LiveServer) -> None:
    """The limit is on the decompressed size, and a body that fits is decoded in full, in several pieces."""
    rows = np.random.default_rng(0).uniform(0, 1, size=(16, 784)).round(4).tolist()
    body = json.dumps({"inputs": rows}).encode()
    assert len(body) < MAX_BODY
    response = httpx.post(
        f"{server.base}/v1/encode", content=gzip.compress(body), headers={**JSON_CT, "content-encoding": "gzip"}
    )
    assert response.status_code == 200 and len(response.json()["latent"]) == 16


def test_stalled_body_is_408(server: LiveServer) -> None:
    sock = raw_request(
        server.port,
        "POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: 1000\n",
        b'{"inputs": [[0.5',
    )
    started = time.monotonic()
    with sock:
        status, headers, body = read_response(sock, timeout=BODY_TIMEOUT * 5)
    waited = time.monotonic() - started
    assert status == 408 and json.loads(body)["error"]["type"] == "request_timeout"
    assert headers["connection"] == "close"
    assert BODY_TIMEOUT * 0.5 <= waited <= BODY_TIMEOUT * 4, waited
    assert_serves(server.base)


def test_trickling_body_is_408(server: LiveServer) -> None:
    """A client sending one byte every 0.3 s never stalls, yet cannot keep the request past the deadline."""
    sock = raw_request(
        server.port, "POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: 1000\n"
    )
    started = time.monotonic()
    with sock:
        answered = False
        for byte in VALID[:40]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1, 2):  # MSG_PEEK: an answer is waiting
                    answered = True
                    break
            except TimeoutError:
                pass
        assert answered, "no answer while trickling"
        status, _, body = read_response(sock, timeout=5)
    assert status == 408 and json.loads(body)["error"]["type"] == "request_timeout"
    assert time.monotonic() - started <= BODY_TIMEOUT * 4
    assert_serves(server.base)


def test_stalled_request_head_is_408(server: LiveServer) -> None:
    """uvicorn parses the head before any middleware: app/server/protocol.py bounds the time it may take."""
    sock = raw_request(server.port, "GET /healthz HTTP/1.1\nHost: t\nX-Slow: still-typ")  # no blank line
    started = time.monotonic()
    with sock:
        status, headers, body = read_response(sock, timeout=HEAD_TIMEOUT * 5)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["type"] == "request_timeout"
    assert HEAD_TIMEOUT * 0.5 <= time.monotonic() - started <= HEAD_TIMEOUT * 4
    assert_serves(server.base)


def test_silent_connection_is_closed_quietly(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT * 5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed, no answer to a request never made
        assert HEAD_TIMEOUT * 0.5 <= time.monotonic() - started <= HEAD_TIMEOUT * 4
    assert_serves(server.base)


@pytest.mark.parametrize(("size", "status"), [(MAX_HEAD - 200, 200), (MAX_HEAD + 1, 431), (4 * MAX_HEAD, 431)])
def test_request_head_size_is_bounded(server: LiveServer, size: int, status: int) -> None:
    sock = raw_request(server.port, f"GET /healthz HTTP/1.1\nHost: t\nX-Pad: {'a' * size}\n")
    with sock:
        got, headers, body = read_response(sock)
    assert got == status
    if status == 431:
        assert headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["type"] == "request_header_too_large" and error["details"]["limit"] == MAX_HEAD
    assert_serves(server.base)


@pytest.mark.parametrize(
    ("head", "body"),
    [
        ("POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: abc\n", b""),
        ("GET /healthz HTTP/9.9 extra\nHost: t\n", b""),
        ("GET /healthz HTTP/1.1\nHost: t\nX-Bad\x01: 1\n", b""),
        ("POST /v1/encode HTTP/1.1\nHost: t\nContent-Length: 5\nTransfer-Encoding: chunked\n", b""),
        ("POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nTransfer-Encoding: chunked\n",
         b"zz\r\n{}\r\n"),
    ],
    ids=["content-length-abc", "bad-request-line", "control-char-header", "length-and-chunked", "bad-chunk-size"],
)  # fmt: skip
def test_malformed_request_is_a_json_400(server: LiveServer, head: str, body: bytes) -> None:
    """httptools rejects the bytes before any middleware: the 400 is still JSON in our error shape."""
    sock = raw_request(server.port, head, body)
    with sock:
        status, headers, answer = read_response(sock)
    assert status == 400 and headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(answer)["error"]
    assert error["type"] == "malformed_request" and "could not be parsed" in error["message"]
    assert_serves(server.base)


def test_v2_timeout_has_the_protocol_shape(server: LiveServer) -> None:
    sock = raw_request(
        server.port,
        "POST /v2/models/dense/infer HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: 500\n",
        b"{",
    )
    with sock:
        status, _, body = read_response(sock, timeout=BODY_TIMEOUT * 5)
    assert status == 408
    assert isinstance(json.loads(body)["error"], str)
    assert_serves(server.base)


def test_client_disconnect_mid_upload_releases_everything(server: LiveServer, http: httpx.Client) -> None:
    for _ in range(MAX_IN_FLIGHT * 2):  # more than the in-flight cap: each one must have been released
        sock = raw_request(
            server.port,
            "POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: 5000\n",
            VALID[:100],
        )
        time.sleep(0.05)
        sock.close()
    deadline = time.monotonic() + 10
    while 'type="client_disconnected"' not in http.get("/metrics").text:
        assert time.monotonic() < deadline, "disconnects not recorded"
        time.sleep(0.1)
    assert_serves(server.base)


def test_bodies_still_arriving_hold_no_in_flight_slot(server: LiveServer) -> None:
    """More requests than the in-flight cap are still sending their bodies: a complete request is served at once
    (they used to hold every slot until their body timeout), and they are served too once their bodies arrive."""
    head = "POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: {}\n"
    held = [raw_request(server.port, head.format(len(VALID)), VALID[:10]) for _ in range(MAX_IN_FLIGHT + 2)]
    try:
        time.sleep(0.3)  # every held request has reached the app
        response = httpx.post(f"{server.base}/v1/encode", content=VALID, headers=JSON_CT, timeout=10)
        assert response.status_code == 200, response.text
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{server.base}{probe}", timeout=5).status_code == 200, probe
        for sock in held:
            sock.sendall(VALID[10:])
        statuses = []
        for sock in held:
            status, headers, body = read_response(sock)
            statuses.append(status)
            if status == 503:  # more complete bodies at once than slots: refused with the cap's answer
                assert json.loads(body)["error"]["type"] == "overloaded" and headers["retry-after"] == "3"
            else:
                assert status == 200 and len(json.loads(body)["latent"][0]) == 32
        assert statuses.count(200) >= MAX_IN_FLIGHT, statuses
    finally:
        for sock in held:
            sock.close()
    assert_serves(server.base)


def test_raw_path_traversal_is_a_plain_404(server: LiveServer) -> None:
    """Dot segments sent as-is (a client would normalise them): no route, no file, a JSON 404."""
    for path in (
        "/v1/models/../../../etc/passwd/encode",
        "/v1/models/dense/../../../app/main.py",
        "/v1/models/./dense",
    ):
        sock = raw_request(server.port, f"GET {path} HTTP/1.1\nHost: t\nConnection: close\n")
        with sock:
            status, headers, body = read_response(sock)
        assert status in (404, 405), (path, status)
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["type"] in ("not_found", "model_not_found", "method_not_allowed")
    assert_serves(server.base)


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("animated-gif-first-frame", animated_gif, "image/gif"),
        ("16-bit-png", lambda: image_bytes("I;16"), "image/png"),
        ("palette-png", lambda: image_bytes("P"), "image/png"),
        ("rgba-png", lambda: image_bytes("RGBA"), "image/png"),
        ("cmyk-jpeg", lambda: image_bytes("CMYK", "JPEG"), "image/jpeg"),
        ("exif-rotated-jpeg", exif_rotated_jpeg, "image/jpeg"),
    ],
)
def test_awkward_images_are_handled_deterministically(
    server: LiveServer, name: str, data: Callable[[], bytes], content_type: str
) -> None:
    body = data()
    answers = [
        httpx.post(
            f"{server.base}/v1/models/conv/reconstruct",
            content=body,
            headers={"content-type": content_type, "accept": "application/json"},
            timeout=30,
        )
        for _ in range(2)
    ]
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].content == answers[1].content
    report = answers[0].json()["inputs"][0]
    assert report["frame_used"] == 0
    if name.startswith("animated"):
        assert report["frames"] == 2
    if name.startswith("exif"):
        assert report["exif_transposed"] is True and report["size"] == [20, 36]
    assert_serves(server.base)


def test_no_cors_headers_by_default(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.base}/v1/encode", content=VALID, headers={**JSON_CT, "origin": "https://evil.example"}
    )
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        f"{server.base}/v1/encode",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    # Without CORS configured a preflight is a plain OPTIONS: the allowed methods, no CORS grant.
    assert preflight.status_code == 204 and "access-control-allow-origin" not in preflight.headers
    assert preflight.headers["allow"] == "POST, OPTIONS"


def test_hostile_request_ids_are_replaced(server: LiveServer) -> None:
    for bad in ("a" * 500, "x y", "<script>"):
        response = httpx.post(f"{server.base}/v1/encode", content=VALID, headers={**JSON_CT, "x-request-id": bad})
        assert response.status_code == 200 and response.headers["x-request-id"] != bad


# -- authentication and CORS (a second server, one model) ------------------------------------------------
API_KEY = "s3cret-test-key"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def secured(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    import shutil

    root = tmp_path_factory.mktemp("secured")
    shutil.copytree(models_dir / "dense", root / "models" / "dense")
    env = {"AE_API_KEY": API_KEY, "AE_CORS_ORIGINS": ORIGIN, "AE_LOG_LEVEL": "warning"}
    with running(root / "models", root / "server.log", env) as live:
        yield live


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/encode", {}),
        ("/v1/encode", {"authorization": "Bearer wrong"}),
        ("/v1/encode", {"authorization": f"Basic {API_KEY}"}),
        ("/v1/encode", {"authorization": "Bearer"}),
        ("/v2/models/dense/infer", {}),
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "empty-token", "v2-missing"],
)
def test_api_key_is_required(secured: LiveServer, path: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{secured.base}{path}", content=VALID, headers={**JSON_CT, **headers})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert API_KEY not in response.text
    good = httpx.post(
        f"{secured.base}/v1/encode", content=VALID, headers={**JSON_CT, "authorization": f"Bearer {API_KEY}"}
    )
    assert good.status_code == 200


def test_health_and_metrics_need_no_key(secured: LiveServer) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{secured.base}{path}").status_code == 200, path
    assert_error(httpx.get(f"{secured.base}/v1/models"), 401, "unauthorized")


def test_cors_allows_the_configured_origin_only(secured: LiveServer) -> None:
    preflight = httpx.options(
        f"{secured.base}/v1/encode",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.options(
        f"{secured.base}/v1/encode",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert_error(refused, 400, "cors_rejected")
    answer = httpx.post(
        f"{secured.base}/v1/encode",
        content=VALID,
        headers={**JSON_CT, "authorization": f"Bearer {API_KEY}", "origin": ORIGIN},
    )
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
    other = httpx.get(f"{secured.base}/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# -- memory and file descriptors over a long run of bad requests ------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.slow
def test_memory_and_fds_stay_flat_over_many_bad_requests(server: LiveServer) -> None:
    prepared = [(case, *_body_and_headers(case)) for case in CASES.values()]
    pid = server.process.pid

    def run(rounds: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            for _ in range(rounds):
                for case, body, headers in prepared:
                    response = client.request(case.method, case.path, content=body, headers=headers)
                    assert response.status_code == case.status
                assert client.post("/v1/encode", content=VALID, headers=JSON_CT).status_code == 200

    run(3)  # warm: caches, arenas, lazily imported modules
    rss_before, fds_before = _rss_kib(pid), _fds(pid)
    started = time.monotonic()
    run(25)
    elapsed = time.monotonic() - started
    rss_after, fds_after = _rss_kib(pid), _fds(pid)
    requests = 25 * (len(prepared) + 1)
    print(
        f"{requests} requests in {elapsed:.1f} s; RSS {rss_before} -> {rss_after} KiB; fds {fds_before} -> {fds_after}"
    )
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)  # generous: noise is a few MiB
    assert fds_after - fds_before <= 4, (fds_before, fds_after)


def test_behind_a_proxy_prefix_the_exemptions_and_v2_shape_hold(tmp_path: Path) -> None:
    """With `--root-path` (uvicorn puts the prefix in front of `path`), health stays exempt from the API key and
    `/v2` errors keep the protocol's shape."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(models_dir=tmp_path, api_key="k", max_body_bytes=2048, log_level="warning")
    with TestClient(create_app(settings), root_path="/api") as client:
        assert client.get("/api/healthz").status_code == 200
        assert_error(client.get("/api/v1/models"), 401, "unauthorized")
        auth = {"authorization": "Bearer k"}
        too_big = client.post("/api/v2/models/dense/infer", content=b" " * 3000, headers=auth)
        assert too_big.status_code == 413 and isinstance(too_big.json()["error"], str)
        unknown = client.get("/api/v2/models/nope", headers=auth)
        assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
        assert_error(client.get("/api/v1/models/nope", headers=auth), 404, "model_not_found")


def test_client_disconnect_mid_inference_releases_everything(server: LiveServer, http: httpx.Client) -> None:
    """Clients that send a whole (heavier) request and hang up at once: the work finishes or stops, nothing stays
    in flight, and the in-flight cap has every slot back."""
    series = json.dumps({"inputs": np.zeros((16, 400, 6)).tolist()}).encode()
    head = (
        "POST /v1/models/lstm/reconstruct HTTP/1.1\nHost: t\nContent-Type: application/json\n"
        f"Content-Length: {len(series)}\n"
    )
    post = 'method="POST"'  # the ones refused by the in-flight cap are counted before routing, as `unmatched`

    def answered_and_in_flight() -> tuple[float, list[float]]:
        lines = http.get("/metrics").text.splitlines()
        answered = sum(float(x.split()[-1]) for x in lines if x.startswith("ae_http_requests_total") and post in x)
        return answered, [float(x.split()[-1]) for x in lines if x.startswith("ae_http_requests_in_flight")]

    before, _ = answered_and_in_flight()
    for _ in range(MAX_IN_FLIGHT * 2):
        raw_request(server.port, head, series).close()
    deadline = time.monotonic() + 30
    while True:
        # Every one of them answered (a request whose client has already closed may still be waiting to be read
        # when the first poll comes), and nothing but this /metrics request in flight.
        answered, gauge = answered_and_in_flight()
        if answered - before >= MAX_IN_FLIGHT * 2 and gauge and max(gauge) <= 1.0:
            break
        assert time.monotonic() < deadline, f"requests still in flight: {gauge}, answered {answered - before}"
        time.sleep(0.1)
    held = [raw_request(server.port, head, series[:10]) for _ in range(MAX_IN_FLIGHT - 1)]
    try:
        assert_serves(server.base)  # every slot but the held ones is free again
    finally:
        for sock in held:
            sock.close()
