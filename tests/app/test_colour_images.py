"""Colour decoding and image encoding for the photograph denoiser (issue 14): what comes in goes out the same way
(gray stays gray, colour stays colour, 16-bit stays 16-bit, alpha and the ICC profile are kept)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from app.api.formats import encode_image
from app.core.images import decode_image

LIMITS = {"max_pixels": 1 << 22, "max_side": 4096}


def _save(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_rgb_comes_back_rgb_exactly() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    decoded = decode_image(_save(Image.fromarray(rgb)), colour=True, **LIMITS)
    assert decoded.is_colour and decoded.pixels.shape == (20, 30, 3) and decoded.alpha is None
    np.testing.assert_array_equal(np.rint(decoded.pixels * 255).astype(np.uint8), rgb)
    again = Image.open(io.BytesIO(encode_image(decoded.pixels, "PNG")))
    assert again.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(again), rgb)


def test_gray_stays_gray_and_16_bit_stays_16_bit() -> None:
    gray16 = np.random.default_rng(1).integers(0, 65536, (16, 12), dtype=np.uint16)
    decoded = decode_image(_save(Image.fromarray(gray16)), colour=True, **LIMITS)
    assert not decoded.is_colour and decoded.bits == 16
    again = Image.open(io.BytesIO(encode_image(decoded.pixels, "PNG", bits=decoded.bits)))
    assert again.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(again).astype(np.uint16), gray16)
    gray8 = decode_image(_save(Image.fromarray(gray16 // 257).convert("L")), colour=True, **LIMITS)
    assert not gray8.is_colour and gray8.bits == 8


def test_alpha_and_the_icc_profile_are_kept() -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (10, 14, 4), dtype=np.uint8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(_save(Image.fromarray(rgba, "RGBA"), icc_profile=icc), colour=True, **LIMITS)
    assert decoded.alpha is not None and decoded.icc_profile == icc
    np.testing.assert_array_equal(np.rint(decoded.alpha * 255).astype(np.uint8), rgba[..., 3])
    again = Image.open(
        io.BytesIO(encode_image(decoded.pixels, "PNG", alpha=decoded.alpha, icc_profile=decoded.icc_profile))
    )
    assert again.mode == "RGBA" and again.info.get("icc_profile") == icc
    np.testing.assert_array_equal(np.asarray(again), rgba)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_are_encoded_at_high_quality(fmt: str) -> None:
    y, x = np.mgrid[0:64, 0:64] / 63.0
    smooth = np.dstack([y, x, (x + y) / 2]).astype(np.float32)
    data = encode_image(smooth, fmt)
    decoded = decode_image(data, colour=True, **LIMITS)
    assert decoded.format == fmt and decoded.is_colour
    mse = float(np.mean((decoded.pixels - smooth) ** 2))
    assert 10 * np.log10(1 / mse) > 40  # high quality: > 40 dB on a smooth image
