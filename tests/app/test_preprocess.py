"""`preprocess=mnist`: a photo-like digit (big, dark on a light, noisy background, off centre) becomes an
MNIST-style digit, so the models treat it like the digits they learnt."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.images import decode_image
from app.core.preprocess import is_dark_on_light, mnist_recipe
from tests.app.conftest import TOLERANCE, Reference, assert_error


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data.mnist import load_mnist

    return load_mnist().test.x[:12]


def photo_of(digit: np.ndarray, seed: int) -> np.ndarray:
    """The digit 6x larger, dark ink on light paper with noise, placed off centre on a 220x190 page."""
    rng = np.random.default_rng(seed)
    big = np.asarray(Image.fromarray(digit).resize((168, 168), Image.Resampling.BILINEAR))
    ink = np.zeros((220, 190), np.float32)
    ink[30:198, 12:180] = big
    return np.clip(0.85 - 0.7 * ink + rng.normal(0, 0.02, ink.shape), 0, 1).astype(np.float32)


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_recipe_recovers_the_digit(digits: np.ndarray) -> None:
    correlations = []
    for i, digit in enumerate(digits):
        out, report = mnist_recipe(photo_of(digit, i))
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert report["inverted"] is True and report["preprocess"] == "mnist"
        assert max(report["digit_size"]) == 20  # fitted in 20x20
        # Centred by mass: the centre of mass sits within a pixel of the middle.
        mass = out.sum()
        cy = (out.sum(axis=1) * np.arange(28)).sum() / mass
        cx = (out.sum(axis=0) * np.arange(28)).sum() / mass
        assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0
        rows = np.flatnonzero(out.max(axis=1) > 0.05)
        assert rows[-1] - rows[0] < 22  # the digit spans about 20 rows, the rest is black as in MNIST
        correlations.append(np.corrcoef(out.ravel(), digit.ravel())[0, 1])
    assert np.mean(correlations) > 0.75, correlations


def test_polarity_detection_and_override(digits: np.ndarray) -> None:
    page = photo_of(digits[0], 0)
    assert is_dark_on_light(page) and not is_dark_on_light(digits[0])
    _, report = mnist_recipe(digits[0])
    assert report["inverted"] is False
    _, forced = mnist_recipe(1.0 - digits[0], invert=True)
    assert forced["inverted"] is True


def test_service_applies_and_reports_the_recipe(client: TestClient, reference: Reference, digits: np.ndarray) -> None:
    data = png_of(photo_of(digits[1], 1))
    response = client.post("/v1/encode?preprocess=mnist", files={"file": ("photo.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    report = body["inputs"][0]
    assert report["preprocess"] == "mnist" and report["inverted"] is True and report["size"] == [190, 220]
    assert report["model_size"] == [28, 28] and len(report["crop_box"]) == 4
    # The service's tensor is the recipe applied to the decoded upload.
    prepared, _ = mnist_recipe(decode_image(data, max_pixels=10**7, max_side=10**4).pixels)
    want = reference.run("dense", "encoder", prepared.reshape(1, 784))["z"]
    np.testing.assert_allclose(np.asarray(body["latent"]), want, atol=TOLERANCE)


def test_recipe_makes_a_photo_look_like_mnist_to_the_model(client: TestClient, digits: np.ndarray) -> None:
    """The reconstruction error of a digit photo drops to that of real digits with the recipe, and is large
    with a plain resize (the model has never seen dark-on-light pages)."""
    with_recipe, plain, originals = [], [], []
    for i, digit in enumerate(digits[:6]):
        data = png_of(photo_of(digit, i))
        files = {"file": ("p.png", data, "image/png")}
        with_recipe.append(client.post("/v1/score?preprocess=mnist", files=files).json()["scores"][0])
        plain.append(client.post("/v1/score", files=files).json()["scores"][0])
        originals.append(client.post("/v1/score", json={"inputs": [digit.ravel().tolist()]}).json()["scores"][0])
    assert np.mean(with_recipe) < np.mean(plain) / 5
    assert np.mean(with_recipe) < 3 * np.mean(originals)


def test_blank_image_has_no_digit(client: TestClient) -> None:
    data = png_of(np.full((50, 50), 0.9, np.float32))
    error = assert_error(client.post("/v1/encode?preprocess=mnist", files={"file": ("b.png", data, "image/png")}), 422)
    assert "no digit" in error["message"]


def test_denoise_inverts_back(client: TestClient, reference: Reference) -> None:
    """invert=true on the denoiser: dark-on-light in, dark-on-light out (the model sees white on black)."""
    page = np.full((24, 24), 0.9, np.float32)
    page[6:18, 10:13] = 0.1
    data = png_of(page)
    response = client.post("/v1/models/denoise/denoise?invert=true", files={"file": ("p.png", data, "image/png")})
    assert response.headers["x-inverted"] == "true"
    out = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float32) / 255
    pixels = decode_image(data, max_pixels=10**7, max_side=10**4).pixels
    want = 1.0 - reference.run("denoise", "full", (1.0 - pixels)[None, None])["denoised"][0, 0]
    assert np.abs(out - want).max() <= 1 / 255 + 1e-6
