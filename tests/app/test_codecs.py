"""Content negotiation and the `.npy` reader, unit by unit; a fixed-size denoiser resized in and out."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.api.formats import JSON, NPY, NPZ, PNG, _npy_header_numpy, negotiate, npy_header, npy_tensor
from app.core.errors import InvalidInput, InvalidNpy, NotAcceptable
from app.core.validation import Limits
from app.settings import Settings
from tests.app.conftest import Reference, make_client, png_bytes

OFFERED = [JSON, NPY, NPZ, PNG]


@pytest.mark.parametrize(
    ("accept", "default", "chosen"),
    [
        (None, JSON, JSON),
        ("", PNG, PNG),
        ("*/*", JSON, JSON),
        ("*/*", PNG, PNG),
        ("image/png", JSON, PNG),
        ("image/*", JSON, PNG),
        ("application/x-npy", JSON, NPY),
        ("image/png;q=0.2, application/json", JSON, JSON),
        ("image/png, application/json;q=0.5", JSON, PNG),
        ("application/json;q=0, */*", JSON, NPY),  # the most specific range wins: JSON is refused
        ("text/html, application/*;q=0.9", JSON, JSON),
        ("APPLICATION/X-NPZ", JSON, NPZ),
    ],
)
def test_negotiate(accept: str | None, default: str, chosen: str) -> None:
    assert negotiate(accept, OFFERED, default) == chosen


@pytest.mark.parametrize("accept", ["text/csv", "image/png;q=0", "application/xml, text/*"])
def test_negotiate_refuses(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept, OFFERED, JSON)


def limits(rows: int) -> Limits:
    return Limits.from_settings(Settings(max_batch_rows=rows))


def save(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_npy_round_trip_and_big_endian() -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(npy_tensor(save(x), limits(10)), x)
    big = npy_tensor(save(x.astype(">f4")), limits(10))
    assert big.dtype == np.float32 and np.array_equal(big, x)


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (save(np.zeros((2, 3), np.float32))[:-4], InvalidNpy, "header says shape [2, 3]"),
        (save(np.zeros((2, 3), np.float32)) + b"\0\0\0\0", InvalidNpy, "header says shape [2, 3]"),
        (save(np.zeros((2, 3), np.int64)), InvalidInput, "dtype <i8"),
        (save(np.asfortranarray(np.zeros((2, 3), np.float32))), InvalidInput, "Fortran"),
        (save(np.zeros(3, np.float32)), InvalidInput, "must be a batch"),
        (save(np.zeros((0, 3), np.float32)), InvalidInput, "empty batch"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 'O'}", InvalidNpy, "not a valid .npy"),
        (b"PK\x03\x04", InvalidNpy, "not a valid .npy"),
    ],
)
def test_npy_refusals(data: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        npy_tensor(data, limits(10))
    assert fragment in str(caught.value)


def test_npy_header_that_lies_about_a_huge_shape_allocates_nothing() -> None:
    header = save(np.zeros((1, 1), np.float32))
    lying = header.replace(b"(1, 1)", b"(9, 9)")
    with pytest.raises(InvalidNpy):
        npy_tensor(lying, limits(100))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((64, 784), np.float32),
        np.zeros((1, 1, 28, 28), np.float32),
        np.zeros((2, 3), ">f4"),
        np.zeros((2, 3), np.float64),
        np.asfortranarray(np.zeros((2, 3), np.float32)),
        np.zeros(5, np.float32),
        np.zeros((), np.float32),
        np.zeros((2, 2), np.bool_),
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)}{'F' if a.flags.f_contiguous and a.ndim > 1 else ''}",
)
def test_fast_npy_header_reads_what_numpy_reads(array: np.ndarray) -> None:
    """The regex reader of numpy's own header form agrees with numpy's reader (shape, order, dtype, offset)."""
    body = save(array)
    assert npy_header(body) is not None
    assert npy_header(body) == _npy_header_numpy(body)


@pytest.mark.parametrize(
    "body",
    [
        save(np.zeros(3, "U3")),  # a dtype outside the fast form
        save(np.zeros((2, 3), np.float32)).replace(b"'descr'", b'"descr"'),  # valid Python, not numpy's form
        save(np.zeros((2, 3), np.float32))[:20],  # truncated inside the header
        b"\x93NUMPY\x02\x00" + save(np.zeros((2, 3), np.float32))[8:],  # version 2.0
    ],
)
def test_fast_npy_header_leaves_other_headers_to_numpy(body: bytes) -> None:
    assert npy_header(body) is None


def test_fixed_size_denoiser_is_resized_in_and_out(model_copy: Callable[..., Path], reference: Reference) -> None:
    """A denoiser whose card says it is not fully convolutional runs at its card size; the answer comes back at
    the upload's size and the headers say so."""
    root = model_copy("denoise")
    card_path = root / "denoise" / "card.json"
    card = json.loads(card_path.read_text())
    card["input"]["fully_convolutional"] = False
    card["input"]["image"].update(height=28, width=28)
    card_path.write_text(json.dumps(card))
    pixels = np.random.default_rng(1).integers(0, 256, size=(45, 30), dtype=np.uint8)
    with make_client(models_dir=root) as c:
        response = c.post("/v1/models/denoise/denoise", files={"file": ("n.png", png_bytes(pixels), "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["x-resize"] == "bilinear 30x45 -> 28x28 -> 30x45"
    assert response.headers["x-model-input-size"] == "28x28"
    out = Image.open(io.BytesIO(response.content))
    assert out.size == (30, 45)
    small = np.asarray(Image.fromarray((pixels / 255.0).astype(np.float32)).resize((28, 28), Image.Resampling.BILINEAR))
    denoised = reference.run("denoise", "full", np.clip(small, 0, 1)[None, None])["denoised"][0, 0]
    back = np.clip(np.asarray(Image.fromarray(denoised).resize((30, 45), Image.Resampling.BILINEAR)), 0, 1)
    assert np.abs(np.asarray(out).astype(int) - np.rint(back * 255).astype(int)).max() <= 1
