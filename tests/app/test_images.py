"""Image decoding: every accepted format and mode to the same grayscale, deterministically, and a real MNIST
digit's PNG to exactly the array training used."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.images import decode_image
from tests.app.conftest import MODELS_DIR, TOLERANCE, Reference, assert_error, png_bytes
from tests.app.tiny_models import write_fixed_colour_model

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


# -- models without a sized image form; fixed-size colour models ----------------------------------------------------
@pytest.fixture(scope="module")
def odd_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """`table`: the dense MNIST model as a vector model with no image form (a table's rows have none);
    `table-sizeless`: the same with an image section that gives no size (what `training fit` used to write);
    `colour8`: a fixed-size 8x8 colour model that shows the service what it was fed."""
    from app.main import create_app
    from app.settings import Settings

    models = tmp_path_factory.mktemp("models")
    for name, image in (("table", None), ("table-sizeless", {"channels": 1})):
        shutil.copytree(MODELS_DIR / "dense", models / name)
        card = json.loads((models / name / "card.json").read_text())
        card["name"] = name
        card["input"].pop("image")
        if image is not None:
            card["input"]["image"] = image
        (models / name / "card.json").write_text(json.dumps(card))
    write_fixed_colour_model(models / "colour8", 8)
    with TestClient(create_app(Settings(models_dir=models, log_level="warning", grpc_port=0))) as test_client:
        yield test_client


def resized_planes(planes: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] pixels in [0, 1] resized as Pillow does it (mode F, bilinear), channel by channel."""
    out = [Image.fromarray(p.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR) for p in planes]
    return np.clip(np.stack([np.asarray(o, dtype=np.float32) for o in out]), 0, 1)


@pytest.mark.parametrize("model", ["table", "table-sizeless"])
def test_a_vector_model_without_an_image_size_loads_and_refuses_images(odd_client: TestClient, model: str) -> None:
    x = np.random.default_rng(3).uniform(0, 1, size=(2, 784)).astype(np.float32)
    assert odd_client.post(f"/v1/models/{model}/encode", json={"inputs": x.tolist()}).status_code == 200
    data = png_bytes(np.zeros((28, 28), np.uint8))
    upload = odd_client.post(f"/v1/models/{model}/encode", files={"file": ("a.png", data, "image/png")})
    error = assert_error(upload, 415, "unsupported_media_type")
    assert f"model {model!r} takes vectors, not images" in error["message"], error
    raw = odd_client.post(f"/v1/models/{model}/reconstruct", content=data, headers={"content-type": "image/png"})
    assert "not images" in assert_error(raw, 415)["message"]
    # No [height, width] alternative in the shape error: the card gives no size.
    error = assert_error(
        odd_client.post(f"/v1/models/{model}/encode", json={"inputs": x.reshape(2, 28, 28).tolist()}), 422
    )
    assert error["message"].endswith(f"model {model!r} takes [784]"), error
    assert error["details"]["accepted_sample_shapes"] == [[784]]


def test_shape_errors_offer_height_width_only_where_it_is_accepted(client: TestClient) -> None:
    """`photo` ([3, height, width], no size in its card) takes no [H, W]; `denoise` ([1, height, width]) does,
    its channel axis of 1 left out; `dense` (28x28 in its card) takes [28, 28]."""
    for model, accepted in (
        ("photo", [[3, "height", "width"]]),
        ("denoise", [[1, "height", "width"], ["height", "width"]]),
        ("dense", [[784], [28, 28]]),
    ):
        task = "encode" if model == "dense" else "denoise"
        bad = client.post(f"/v1/models/{model}/{task}", json={"inputs": [[0.5] * 5]})
        error = assert_error(bad, 422)
        assert error["details"]["accepted_sample_shapes"] == accepted, (model, error)
        assert error["message"].endswith(f"takes {' or '.join(str(s) for s in accepted)}")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_uploads_to_a_fixed_size_colour_model_are_resized_like_gray_ones(
    odd_client: TestClient, mode: str
) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    data = png_bytes(rgb, mode)
    body = odd_client.post("/v1/models/colour8/encode", files={"file": ("c.png", data, "image/png")})
    assert body.status_code == 200, body.text
    report = body.json()["inputs"][0]
    assert report["size"] == [12, 10] and report["model_size"] == [8, 8] and report["preprocess"] == "resize"
    assert report["resized"] == {"from": [12, 10], "to": [8, 8], "method": "bilinear"}
    pixels = decode_image(data, colour=True, **LIMITS).pixels
    planes = pixels.transpose(2, 0, 1) if mode == "RGB" else np.repeat(pixels[None], 3, axis=0)
    want = resized_planes(planes, 8, 8).reshape(1, -1)
    np.testing.assert_allclose(np.asarray(body.json()["latent"]), want, atol=TOLERANCE)
    # As for a gray model: preprocess=none keeps the size and so is refused; an upload of the model's size is not
    # resized; denoise answers at the upload's size (resized in and out, stated in X-Resize).
    refused = odd_client.post("/v1/models/colour8/encode?preprocess=none", files={"file": ("c.png", data, "image/png")})
    assert "image is 12x10 but the model takes 8x8" in assert_error(refused, 422)["message"]
    native = png_bytes(rgb[:8, :8], mode)
    same = odd_client.post("/v1/models/colour8/encode", files={"file": ("n.png", native, "image/png")}).json()
    assert "resized" not in same["inputs"][0] and same["inputs"][0]["model_size"] == [8, 8]
    denoised = odd_client.post(
        "/v1/models/colour8/denoise", files={"file": ("c.png", data, "image/png")}, headers={"accept": "image/png"}
    )
    assert denoised.status_code == 200, denoised.text
    assert denoised.headers["x-resize"] == "bilinear 12x10 -> 8x8 -> 12x10"
    answer = Image.open(io.BytesIO(denoised.content))
    assert answer.size == (12, 10) and answer.mode == mode


def test_any_size_colour_models_are_not_resized(client: TestClient) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, size=(30, 44, 3), dtype=np.uint8)
    files = {"file": ("p.png", png_bytes(rgb), "image/png")}
    body = client.post("/v1/models/photo/denoise", files=files, headers={"accept": "application/json"}).json()
    report = body["inputs"][0]
    assert report["model_size"] == [44, 30] and "resized" not in report and report["preprocess"] == "none"
