"""Fuzzing the image-decoding path (`app.core.images.decode_image`) with hypothesis: random bytes, and valid images of
every accepted format mutated (bytes flipped, cut short, spliced, headers rewritten). Whatever the input, the
decoder either returns finite grayscale pixels in [0, 1] of the size it reports, or raises one of the service's
4xx errors: never another exception (which would be a 500), never a hang or an unbounded allocation.

The run is brief by default (CI); `IMAGE_FUZZ_EXAMPLES` raises it for a longer local run."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.core.errors import ServiceError
from app.core.images import decode_image

EXAMPLES = int(os.environ.get("IMAGE_FUZZ_EXAMPLES", "300"))
MAX_PIXELS, MAX_SIDE = 512 * 512, 1024
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def _seed(fmt: str, mode: str, frames: int = 1) -> bytes:
    rng = np.random.default_rng(len(fmt) * 7 + len(mode))
    gray = rng.integers(0, 256, size=(12, 9), dtype=np.uint8)
    images = [Image.fromarray(np.roll(gray, i)).convert(mode) for i in range(frames)]
    buffer = io.BytesIO()
    extra = {"save_all": True, "append_images": images[1:]} if frames > 1 else {}
    images[0].save(buffer, format=fmt, **extra)
    return buffer.getvalue()


SEEDS = [
    _seed("PNG", "L"),
    _seed("PNG", "RGBA"),
    _seed("PNG", "P"),
    _seed("PNG", "I;16"),
    _seed("JPEG", "L"),
    _seed("JPEG", "CMYK"),
    _seed("BMP", "RGB"),
    _seed("BMP", "1"),
    _seed("GIF", "P", frames=3),
    _seed("WEBP", "RGB"),
]


def check_decodes_or_refuses(data: bytes) -> None:
    try:
        decoded = decode_image(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    except ServiceError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message
        return
    pixels = decoded.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert pixels.shape == (decoded.height, decoded.width)
    assert decoded.width * decoded.height <= MAX_PIXELS and max(pixels.shape) <= MAX_SIDE
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "splice", "insert", "size"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[position:]
        elif action == "splice":
            data[position : position + 4] = draw(st.binary(min_size=1, max_size=16))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "size" and len(data) > 24:
            # Rewrite the dimensions where PNG (IHDR), GIF and BMP keep them: bombs and zero sizes.
            width, height = draw(st.sampled_from([0, 1, 3, 65535, 2**31 - 1])), draw(st.integers(0, 70000))
            if data.startswith(b"\x89PNG"):
                data[16:24] = struct.pack(">II", width, height)
            elif data.startswith(b"GIF"):
                data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
            elif data.startswith(b"BM"):
                data[18:26] = struct.pack("<ii", width, height - 35000)
    return bytes(data)


def test_seeds_decode() -> None:
    for seed in SEEDS:
        assert decode_image(seed, max_pixels=MAX_PIXELS, max_side=MAX_SIDE).pixels.shape == (12, 9)


@pytest.mark.slow
@FUZZ
@given(data=mutated())
def test_mutated_images_decode_or_are_refused(data: bytes) -> None:
    check_decodes_or_refuses(data)


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.sampled_from(SEEDS).map(lambda seed: seed[: len(seed) // 2])))
def test_random_bytes_decode_or_are_refused(data: bytes) -> None:
    check_decodes_or_refuses(data)
