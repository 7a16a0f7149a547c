"""The demo page's photograph mode in a real headless Chromium against a real service serving a quick-trained `photo`
model: the noise the page adds, the PNG it sends, the answer and the sigma headers it shows, the PSNRs it shows
(recomputed here from the bytes that went over the wire), the gray/colour round trip, the synchronised zoom, the
service's errors shown to the user, behind a path prefix, and the plain message when no photograph denoiser is
served."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
from PIL import Image

from tests.browser.conftest import PageFactory

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "app" / "static" / "examples"
TIMEOUT_MS = 60_000
PREFIX = "/behind/a/proxy"


def clean_photo(name: str) -> np.ndarray:
    """The bundled sample as the page reads it: 8-bit, H x W (gray) or H x W x 3 (colour)."""
    return np.asarray(Image.open(EXAMPLES / f"{name}.png"), dtype=np.int64)


def png_pixels(data: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.mode, np.asarray(image, dtype=np.int64)


def psnr(x: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((x.astype(np.float64) - reference) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def shown_psnr(tab: Any, element_id: str) -> float:
    text = tab.text_content(f"#{element_id}") or ""
    match = re.fullmatch(r"PSNR (\d+\.\d\d) dB", text.strip())
    assert match, f"#{element_id}: {text!r}"
    return float(match.group(1))


def open_photo_mode(tab: Any, url: str) -> None:
    tab.goto(url)
    tab.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    assert tab.get_attribute("#photo-section", "data-available") == "true"


def wait_for_denoised(tab: Any, **attributes: str) -> None:
    selector = "#photo-denoised[data-state=done]" + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())
    tab.wait_for_selector(selector, state="attached", timeout=TIMEOUT_MS)


def denoise_responses(tab: Any) -> list[Any]:
    """Every answer of the photo model's /denoise route the page receives from now on, in order."""
    responses: list[Any] = []
    tab.on("response", lambda r: responses.append(r) if "/v1/models/photo/denoise" in r.url else None)
    return responses


def noise_of(noisy: np.ndarray, clean: np.ndarray, sigma: float) -> np.ndarray:
    """noisy - clean where clipping can hardly have touched it (clean at least 3 sigma from 0 and 255)."""
    inside = (clean >= 3 * sigma) & (clean <= 255 - 3 * sigma)
    assert inside.sum() > 5000, "too few pixels away from the clipping bounds to measure the noise"
    return (noisy - clean)[inside]


def test_colour_sample_behind_a_prefix_with_estimated_sigma(new_page: PageFactory, photo_server: str) -> None:
    """The colour sample at sigma 25: the page sends an RGB PNG of the clean photo plus Gaussian noise of std 25,
    independent per channel, to the relative route (so it works under a prefix); it shows the PSNRs of exactly the
    bytes sent and received, and the service's estimated sigma."""
    tab, record = new_page(photo_server, PREFIX)
    open_photo_mode(tab, f"{photo_server}{PREFIX}/")
    assert tab.input_value("#photo-sample") == "coffee" and tab.input_value("#photo-sigma") == "25"
    assert not tab.is_checked("#photo-tell-sigma")
    with tab.expect_response(lambda r: "/v1/models/photo/denoise" in r.url, timeout=TIMEOUT_MS) as answer:
        tab.click("#photo-run")
    wait_for_denoised(tab, input="sample:coffee", sigma="25", told="false")
    response = answer.value
    request = response.request
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    assert request.method == "POST" and request.headers["content-type"] == "image/png"
    # the page asked under its prefix (what the service saw is the URL with the prefix stripped), with no sigma
    assert f"{photo_server}{PREFIX}/v1/models/photo/denoise" in record.requests
    assert request.url == f"{photo_server}/v1/models/photo/denoise"

    clean = clean_photo("coffee")
    mode, noisy = png_pixels(request.post_data_buffer)
    assert mode == "RGB" and noisy.shape == clean.shape == (256, 384, 3)
    noise = noisy - clean
    inner = noise_of(noisy, clean, 25)
    assert abs(inner.std() - 25) < 1.0 and abs(inner.mean()) < 0.5, (inner.std(), inner.mean())
    flat = noise.reshape(-1, 3).astype(np.float64)
    correlation = np.corrcoef(flat.T)
    assert np.abs(correlation[np.triu_indices(3, 1)]).max() < 0.05, "colour noise is independent per channel"
    assert abs(shown_psnr(tab, "photo-noisy-psnr") - psnr(noisy, clean)) <= 0.006

    mode, denoised = png_pixels(response.body())
    assert mode == "RGB" and denoised.shape == clean.shape
    assert abs(shown_psnr(tab, "photo-denoised-psnr") - psnr(denoised, clean)) <= 0.006
    assert response.headers["x-sigma-source"] == "estimated"
    estimated = float(response.headers["x-sigma"])
    assert abs(estimated - 25) < 5, f"the service estimated sigma {estimated} for noise of std 25"
    assert tab.text_content("#photo-sigma-used") == f"estimated σ {estimated:.1f}"
    assert tab.get_attribute("#photo-denoised", "data-colour") == "colour"
    assert tab.text_content("#photo-message") == ""

    assert record.requests and all(url.startswith(f"{photo_server}{PREFIX}/") for url in record.requests)
    record.assert_clean()


def test_told_sigma_is_given_and_equals_the_slider(new_page: PageFactory, photo_server: str) -> None:
    """With "tell the model sigma" checked, the page adds ?sigma=<slider>, and shows the service's "given" sigma."""
    tab, record = new_page(photo_server)
    open_photo_mode(tab, f"{photo_server}/")
    responses = denoise_responses(tab)
    tab.check("#photo-tell-sigma")
    tab.fill("#photo-sigma", "30")
    wait_for_denoised(tab, input="sample:coffee", sigma="30", told="true")
    response = [r for r in responses if parse_qs(urlsplit(r.url).query).get("sigma") == ["30"]][-1]
    assert response.status == 200
    assert response.headers["x-sigma-source"] == "given" and float(response.headers["x-sigma"]) == 30.0
    assert tab.text_content("#photo-sigma-used") == "given σ 30.0"
    assert tab.get_attribute("#photo-denoised", "data-sigma-source") == "given"
    clean = clean_photo("coffee")
    _, noisy = png_pixels(response.request.post_data_buffer)
    inner = noise_of(noisy, clean, 30)
    assert abs(inner.std() - 30) < 1.0, inner.std()
    _, denoised = png_pixels(response.body())
    assert abs(shown_psnr(tab, "photo-denoised-psnr") - psnr(denoised, clean)) <= 0.006
    record.assert_clean()


def test_gray_sample_goes_and_comes_back_gray(new_page: PageFactory, photo_server: str) -> None:
    """The gray sample is sent as a gray PNG with gray noise and the service answers in gray."""
    tab, record = new_page(photo_server)
    open_photo_mode(tab, f"{photo_server}/")
    responses = denoise_responses(tab)
    tab.select_option("#photo-sample", "camera")
    wait_for_denoised(tab, input="sample:camera", sigma="25")
    response = responses[-1]
    clean = clean_photo("camera")
    mode, noisy = png_pixels(response.request.post_data_buffer)
    assert mode == "L" and noisy.shape == clean.shape == (384, 384)
    inner = noise_of(noisy, clean, 25)
    assert abs(inner.std() - 25) < 1.0, inner.std()
    mode, denoised = png_pixels(response.body())
    assert mode == "L" and denoised.shape == clean.shape
    assert tab.get_attribute("#photo-denoised", "data-colour") == "gray"
    assert abs(shown_psnr(tab, "photo-noisy-psnr") - psnr(noisy, clean)) <= 0.006
    assert abs(shown_psnr(tab, "photo-denoised-psnr") - psnr(denoised, clean)) <= 0.006
    assert "384×384" in (tab.text_content("#photo-info") or "") and "gray" in (tab.text_content("#photo-info") or "")
    record.assert_clean()


def test_an_uploaded_photo_is_downscaled_and_denoised(new_page: PageFactory, photo_server: str, tmp_path: Path) -> None:
    """A user's JPEG larger than 512 px is read in colour, downscaled to 512 px on its longer side, sent as an RGB
    PNG with the noise, and answered at that size."""
    tab, record = new_page(photo_server)
    open_photo_mode(tab, f"{photo_server}/")
    responses = denoise_responses(tab)
    upload = tmp_path / "holiday.jpg"
    Image.open(EXAMPLES / "coffee.png").resize((900, 600)).save(upload, format="JPEG", quality=90)
    tab.set_input_files("#photo-upload", str(upload))
    wait_for_denoised(tab, input="upload:holiday.jpg", sigma="25")
    assert tab.input_value("#photo-sample") == ""
    assert tab.text_content("#photo-info") == "holiday.jpg: 512×341 (downscaled from 900×600), colour"
    response = responses[-1]
    mode, noisy = png_pixels(response.request.post_data_buffer)
    assert mode == "RGB" and noisy.shape == (341, 512, 3)
    mode, denoised = png_pixels(response.body())
    assert mode == "RGB" and denoised.shape == (341, 512, 3)
    # The clean image is the upload downscaled (the browser's resampling, not PIL's: they differ by a level or
    # two), so what was sent is that plus noise of std 25 and the PSNR the page shows is about the one against it.
    clean = np.asarray(Image.open(upload).resize((512, 341), Image.Resampling.LANCZOS), dtype=np.int64)
    inner = noise_of(noisy, clean, 25)
    assert 24 < inner.std() < 26.5, inner.std()
    assert abs(shown_psnr(tab, "photo-noisy-psnr") - psnr(noisy, clean)) < 0.2
    assert abs(shown_psnr(tab, "photo-denoised-psnr") - psnr(denoised, clean)) < 0.2
    record.assert_clean()


# The RGB shown at device pixel (px, py) of a canvas, and a canvas's size in device pixels.
CANVAS_PIXEL = """([id, px, py]) => Array.from(
  document.getElementById(id).getContext('2d').getImageData(px, py, 1, 1).data.slice(0, 3))"""
CANVAS_SIZE = "(id) => [document.getElementById(id).width, document.getElementById(id).height]"


def test_zoom_shows_the_same_pixels_of_all_three(new_page: PageFactory, photo_server: str) -> None:
    """A click magnifies 4x around the clicked spot, a drag moves the region; the three views then show the same
    source pixel at the same place: the noisy, denoised and clean values of that pixel as sent and received."""
    tab, record = new_page(photo_server)
    open_photo_mode(tab, f"{photo_server}/")
    responses = denoise_responses(tab)
    tab.click("#photo-run")
    wait_for_denoised(tab, input="sample:coffee")
    tab.locator("#photo-clean").scroll_into_view_if_needed()
    box = tab.locator("#photo-clean").bounding_box()
    assert box is not None
    tab.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    assert tab.get_attribute("#photo-panels", "data-zoom") == "4" and tab.input_value("#photo-zoom") == "4"
    x, y, w, h = (float(v) for v in (tab.get_attribute("#photo-panels", "data-region") or "").split(","))
    assert (w, h) == (96, 64), "4x: a quarter of 384x256"
    assert abs(x + w / 2 - 96) <= 1 and abs(y + h / 2 - 128) <= 1, "centred on the clicked spot"

    # drag the region 40 % of a view's width to the left: it moves right in the image by 40 % of its width
    start = (box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    tab.mouse.move(*start)
    tab.mouse.down()
    tab.mouse.move(start[0] - box["width"] * 0.4, start[1], steps=8)
    tab.mouse.up()
    x2, y2, _, _ = (float(v) for v in (tab.get_attribute("#photo-panels", "data-region") or "").split(","))
    assert abs((x2 - x) - 0.4 * w) <= 1.5 and y2 == y

    response = responses[-1]
    images = {
        "photo-noisy": png_pixels(response.request.post_data_buffer)[1],
        "photo-denoised": png_pixels(response.body())[1],
        "photo-clean": clean_photo("coffee"),
    }
    for fx, fy in ((0.5, 0.5), (0.1, 0.9), (0.83, 0.27)):
        sx, sy = int(x2 + fx * w), int(y2 + fy * h)  # a source pixel inside the region
        for element_id, pixels in images.items():
            width, height = tab.evaluate(CANVAS_SIZE, element_id)
            # the centre of that source pixel's magnified block in the canvas
            px, py = int((sx - x2 + 0.5) * width / w), int((sy - y2 + 0.5) * height / h)
            shown = tab.evaluate(CANVAS_PIXEL, [element_id, px, py])
            assert shown == pixels[sy, sx].tolist(), (element_id, sx, sy, shown)
    tab.fill("#photo-zoom", "1")
    assert tab.get_attribute("#photo-panels", "data-region") == "0,0,384,256"
    record.assert_clean()


def test_service_errors_are_shown(new_page: PageFactory, photo_server: str, tmp_path: Path) -> None:
    """An upload the model cannot take (1 pixel wide) is sent as it is; the service's 422 message is shown."""
    tab, _ = new_page(photo_server)
    open_photo_mode(tab, f"{photo_server}/")
    tiny = tmp_path / "line.png"
    Image.fromarray(np.full((6, 1, 3), 90, dtype=np.uint8)).save(tiny)
    tab.set_input_files("#photo-upload", str(tiny))
    tab.wait_for_selector(
        '#photo-denoised[data-state=error][data-input="upload:line.png"]', state="attached", timeout=TIMEOUT_MS
    )
    direct = httpx.post(
        f"{photo_server}/v1/models/photo/denoise",
        content=tiny.read_bytes(),
        headers={"content-type": "image/png", "accept": "image/png"},
        timeout=30,
    )
    assert direct.status_code == 422
    error = direct.json()["error"]
    assert tab.get_attribute("#photo-message", "class") == "error"
    shown = tab.text_content("#photo-message") or ""
    assert "422" in shown and error["type"] in shown and error["message"] in shown, shown
    assert tab.get_attribute("#photo-section", "data-available") == "true"


def test_without_a_photo_model_the_mode_says_so(new_page: PageFactory, server_without_photo: str) -> None:
    """No model of kind photo-denoise: the photograph mode explains itself, asks for nothing, and the digit modes
    work as before."""
    tab, record = new_page(server_without_photo)
    tab.goto(f"{server_without_photo}/")
    tab.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    models = httpx.get(f"{server_without_photo}/v1/models", timeout=10).json()["models"]
    assert not any(m["kind"] == "photo-denoise" for m in models)
    assert tab.get_attribute("#photo-section", "data-available") == "false"
    assert tab.is_visible("#photo-unavailable") and not tab.is_visible("#photo-mode")
    message = tab.text_content("#photo-unavailable") or ""
    assert message == (
        'Photograph mode is not available: this service serves no model of kind "photo-denoise". '
        "The rest of the page still works."
    )
    tab.wait_for_selector('#denoised[data-state=done][data-input="sample:3"]', state="attached", timeout=TIMEOUT_MS)
    assert not any("/examples/" in url for url in record.requests), "no sample photograph is fetched"
    record.assert_clean()
