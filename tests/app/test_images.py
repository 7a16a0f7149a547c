"""Image decoding: every accepted format and mode to the same grayscale, deterministically, and a real MNIST
digit's PNG to exactly the array training used."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.images import decode_image
from tests.app.conftest import TOLERANCE, Reference, png_bytes

LIMITS = {"max_pixels": 10_000_000, "max_side": 10_000}


def decode(data: bytes) -> np.ndarray:
    return decode_image(data, **LIMITS).pixels


def encoded(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 from 8-bit RGB, as documented: (299 R + 587 G + 114 B) / 1000 / 255."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((299 * r + 587 * g + 114 * b) / (1000.0 * 255.0)).astype(np.float32)


@pytest.fixture(scope="module")
def mnist_test_digits() -> tuple[np.ndarray, np.ndarray]:
    from training.data.mnist import load_mnist

    test = load_mnist().test
    return test.x[:20], test.y[:20]


def test_mnist_digit_png_decodes_to_exactly_the_training_array(mnist_test_digits: tuple) -> None:
    digits, _ = mnist_test_digits
    for x in digits:
        pixels_u8 = np.rint(x * 255).astype(np.uint8)
        got = decode(png_bytes(pixels_u8))
        assert got.dtype == np.float32
        assert np.array_equal(got, x)  # bit for bit: uint8 / 255 as training computed it


def test_mnist_digit_png_through_the_service_equals_the_json_array(
    client: TestClient, mnist_test_digits: tuple
) -> None:
    """Upload the digit as a PNG and as the training array in JSON: the model sees the same tensor."""
    digits, _ = mnist_test_digits
    for x in digits[:5]:
        data = png_bytes(np.rint(x * 255).astype(np.uint8))
        for model in ("dense", "conv"):
            via_png = client.post(f"/v1/models/{model}/encode", files={"file": ("d.png", data, "image/png")})
            via_json = client.post(f"/v1/models/{model}/encode", json={"inputs": [x.tolist()]})
            assert via_png.status_code == via_json.status_code == 200
            assert via_png.json()["latent"] == via_json.json()["latent"]
            assert via_png.json()["inputs"][0]["preprocess"] == "resize"
            assert "resized" not in via_png.json()["inputs"][0]  # 28x28 already: nothing done


def test_gray_stored_as_rgb_and_rgba_opaque_decode_the_same() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23), dtype=np.uint8)
    want = (pixels / 255.0).astype(np.float32)
    gray = Image.fromarray(pixels)
    for mode in ("L", "RGB", "RGBA", "LA"):
        assert np.array_equal(decode(encoded(gray.convert(mode))), want), mode


def test_color_uses_bt601_luma() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(encoded(Image.fromarray(rgb))), luma(rgb))


def test_alpha_is_composited_over_black() -> None:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    alpha = rgba[..., 3].astype(np.float64) / 255.0
    want = (luma(rgba[..., :3]).astype(np.float64) * alpha).astype(np.float32)
    np.testing.assert_allclose(decode(encoded(Image.fromarray(rgba))), want, atol=1e-7)
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    want_la = (la[..., 0].astype(np.int64) * la[..., 1] / (255.0 * 255.0)).astype(np.float32)
    np.testing.assert_array_equal(decode(encoded(Image.fromarray(la, mode="LA"))), want_la)


def test_palette_with_and_without_transparency() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    want = luma(np.asarray(palette_image.convert("RGB")))
    np.testing.assert_array_equal(decode(encoded(palette_image)), want)
    index = np.asarray(palette_image)[0, 0]
    transparent = palette_image.copy()
    transparent.info["transparency"] = int(index)
    got = decode(encoded(transparent, transparency=int(index)))
    assert np.all(got[np.asarray(palette_image) == index] == 0.0)  # transparent over black
    np.testing.assert_array_equal(got[np.asarray(palette_image) != index], want[np.asarray(palette_image) != index])


def test_sixteen_bit_is_divided_by_65535() -> None:
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    got = decode(encoded(Image.fromarray(values)))
    np.testing.assert_array_equal(got, (values / 65535.0).astype(np.float32))


def test_bilevel_bmp_and_webp_lossless() -> None:
    bits = np.random.default_rng(4).integers(0, 2, size=(12, 12)).astype(bool)
    assert np.array_equal(decode(encoded(Image.fromarray(bits), "BMP")), bits.astype(np.float32))
    pixels = np.random.default_rng(5).integers(0, 256, size=(12, 12), dtype=np.uint8)
    got = decode(encoded(Image.fromarray(pixels).convert("RGB"), "WEBP", lossless=True))
    np.testing.assert_array_equal(got, (pixels / 255.0).astype(np.float32))


def test_jpeg_gray_and_cmyk_decode_like_pillow() -> None:
    pixels = np.random.default_rng(6).integers(0, 256, size=(16, 16), dtype=np.uint8)
    data = encoded(Image.fromarray(pixels), "JPEG", quality=90)
    want = (np.asarray(Image.open(io.BytesIO(data))) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(decode(data), want)
    cmyk = encoded(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=90)
    report = decode_image(cmyk, **LIMITS)
    assert report.mode == "CMYK"
    want = luma(np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")))
    np.testing.assert_array_equal(report.pixels, want)


def test_animated_gif_uses_the_first_frame() -> None:
    first = np.full((6, 6), 200, np.uint8)
    second = np.full((6, 6), 10, np.uint8)
    frames = [Image.fromarray(first).convert("P"), Image.fromarray(second).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.frames == 2 and decoded.report({}).details["frame_used"] == 0
    np.testing.assert_array_equal(decoded.pixels, np.full((6, 6), 200 / 255.0, np.float32))


def test_exif_orientation_is_applied_and_the_oriented_size_used() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encoded(Image.fromarray(pixels), exif=exif), **LIMITS)
    assert decoded.exif_transposed and (decoded.width, decoded.height) == (3, 4)
    np.testing.assert_array_equal(decoded.pixels, (np.rot90(pixels, -1) / 255.0).astype(np.float32))


def test_image_upload_reports_what_was_done(client: TestClient, reference: Reference) -> None:
    """A 56x42 RGBA upload to a 28x28 model: resized (reported) and the model sees the resized pixels."""
    rgba = np.random.default_rng(7).integers(0, 256, size=(42, 56, 4), dtype=np.uint8)
    data = encoded(Image.fromarray(rgba))
    body = client.post("/v1/models/conv/encode", files={"file": ("c.png", data, "image/png")}).json()
    report = body["inputs"][0]
    assert report["mode"] == "RGBA" and report["size"] == [56, 42] and report["model_size"] == [28, 28]
    assert report["resized"] == {"from": [56, 42], "to": [28, 28], "method": "bilinear"}
    gray = decode(data)
    resized = np.asarray(Image.fromarray(gray).resize((28, 28), Image.Resampling.BILINEAR), dtype=np.float32)
    want = reference.run("conv", "encoder", np.clip(resized, 0, 1)[None, None])["z"]
    np.testing.assert_allclose(np.asarray(body["latent"]), want, atol=TOLERANCE)


def test_several_files_make_a_batch(client: TestClient, reference: Reference) -> None:
    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, size=(28, 28), dtype=np.uint8) for _ in range(3)]
    files = [("file", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(images)]
    body = client.post("/v1/models/dense/reconstruct", files=files).json()
    x = np.stack([(p / 255.0).astype(np.float32).reshape(784) for p in images])
    want = reference.run("dense", "full", x)
    np.testing.assert_allclose(np.asarray(body["scores"]), want["score"], atol=TOLERANCE)
    assert [r["filename"] for r in body["inputs"]] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {"quality": 95}), ("BMP", {}), ("GIF", {}), ("WEBP", {"quality": 90})],
)
def test_every_format_through_the_service(client: TestClient, reference: Reference, fmt: str, options: dict) -> None:
    """Each accepted format reaches the model as Pillow decodes it (converted by the documented rules)."""
    rgb = np.random.default_rng(9).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(rgb), fmt, **options)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    if decoded.mode == "P":
        decoded = decoded.convert("RGB")
    want_pixels = luma(np.asarray(decoded.convert("RGB")))
    body = client.post("/v1/models/conv/encode", files={"file": (f"x.{fmt.lower()}", data, "image/*")}).json()
    assert body["inputs"][0]["format"] == fmt
    want = reference.run("conv", "encoder", want_pixels[None, None])["z"]
    np.testing.assert_allclose(np.asarray(body["latent"]), want, atol=TOLERANCE)
