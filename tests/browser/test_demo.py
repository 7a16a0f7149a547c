"""The demo page (`GET /`) and the API docs in a real headless Chromium against a real uvicorn process: they load
with no console error and no request outside the service, an uploaded digit comes back denoised exactly as ONNX
Runtime computes it, the latent walk decodes the codes the encoder gives, and /docs renders every operation."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import Reference
from tests.app.live import free_port
from tests.browser.conftest import PageRecord

REPO = Path(__file__).resolve().parents[2]
DIGITS = json.loads((REPO / "app" / "static" / "digits.json").read_text())["digits"]
README = (REPO / "README.md").read_text()
API_KEY = "demo-test-key"
TIMEOUT_MS = 30_000

# Gray levels (0-255) of an <img> or <canvas>, read back through a canvas in the page.
READ_PIXELS = """(id) => {
  const el = document.getElementById(id);
  const canvas = document.createElement('canvas');
  canvas.width = el.naturalWidth || el.width;
  canvas.height = el.naturalHeight || el.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(el, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  return {width: canvas.width, height: canvas.height, gray: Array.from(rgba.filter((_, i) => i % 4 === 0))};
}"""


def read_pixels(tab: Any, element_id: str) -> np.ndarray:
    out = tab.evaluate(READ_PIXELS, element_id)
    return np.asarray(out["gray"], dtype=np.int64).reshape(out["height"], out["width"])


def digit(label: str) -> np.ndarray:
    return np.asarray(DIGITS[label], dtype=np.uint8).reshape(28, 28)


def as_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def open_demo(tab: Any, server: str) -> None:
    tab.goto(server + "/")
    tab.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)


def wait_for_output(tab: Any, element_id: str, **attributes: str) -> None:
    selector = f"#{element_id}[data-state=done]" + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())
    tab.wait_for_selector(selector, state="attached", timeout=TIMEOUT_MS)


def psnr_of(tab: Any, element_id: str) -> float:
    text = tab.text_content(f"#{element_id}") or ""
    match = re.search(r"PSNR ([0-9.]+) dB", text)
    assert match, f"#{element_id}: {text!r}"
    return float(match.group(1))


def test_demo_page_loads_clean(page: tuple[Any, PageRecord], server: str) -> None:
    """Everything on the page at load: no console error, nothing fetched from outside, every panel filled."""
    tab, record = page
    response = tab.goto(server + "/")
    assert response is not None and response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    tab.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["models"]
    ready = sum(m["status"] == "ready" for m in models)
    assert tab.text_content("#status") == f"{ready} of {len(models)} models ready"
    for element_id in ("denoised", "reconstruction"):
        wait_for_output(tab, element_id, input="sample:3")
        assert read_pixels(tab, element_id).shape == (28, 28)
    assert tab.locator("#walk-strip canvas").count() == int(tab.input_value("#walk-steps"))
    # The card shows the model's metrics as the API gives them.
    card = httpx.get(f"{server}/v1/models/dense", timeout=10).json()
    shown = tab.text_content("#card") or ""
    for name, value in card["metrics"].items():
        if isinstance(value, (int, float)):
            assert name in shown, f"metric {name} missing from the card panel"
    assert "passed" in shown or "failed" in shown, "the quality gates are shown"
    # Every choice offered is a model that serves that task (photograph denoisers have their own mode).
    offered = tab.eval_on_selector_all("#denoise-model option", "options => options.map(o => o.value)")
    digit_denoisers = [m for m in models if "denoise" in m["tasks"] and m["kind"] != "photo-denoise"]
    assert offered == [m["name"] for m in digit_denoisers if m["status"] == "ready"]
    record.assert_clean()


def test_upload_is_denoised_as_onnx_runtime_computes_it(
    page: tuple[Any, PageRecord], server: str, reference: Reference, tmp_path: Path
) -> None:
    """Upload a 28x28 digit with the noise at 0: the page sends it unchanged, and the denoised image it shows is the
    denoiser's output for those pixels. Then with noise: the denoised image is closer to the clean digit."""
    tab, record = page
    open_demo(tab, server)
    tab.fill("#sigma", "0")
    wait_for_output(tab, "denoised", sigma="0")
    pixels = digit("5")
    upload = tmp_path / "five.png"
    upload.write_bytes(as_png(pixels))
    tab.set_input_files("#upload", str(upload))
    wait_for_output(tab, "denoised", input="upload:five.png", sigma="0")
    wait_for_output(tab, "reconstruction", input="upload:five.png", sigma="0")
    assert np.array_equal(read_pixels(tab, "noisy"), pixels), "sigma 0: the noisy input is the upload"
    x = (pixels / 255.0).astype(np.float32)[None, None]
    denoised = next(iter(reference.run("denoise", "full", x).values()))[0, 0]
    want = np.rint(np.clip(denoised, 0, 1) * 255).astype(np.int64)
    assert np.abs(read_pixels(tab, "denoised") - want).max() <= 1
    assert re.search(r"score \d+\.\d{4}", tab.text_content("#reconstruction-score") or "")

    tab.fill("#sigma", "0.5")
    wait_for_output(tab, "denoised", input="upload:five.png", sigma="0.5")
    assert psnr_of(tab, "denoised-psnr") > psnr_of(tab, "noisy-psnr") + 3, "denoising gains at least 3 dB"
    record.assert_clean()


def test_latent_walk_decodes_the_encoded_digits(
    page: tuple[Any, PageRecord], server: str, reference: Reference
) -> None:
    """The walk's ends are the decoder applied to the encoder's codes of the two digits; the middle differs."""
    tab, record = page
    open_demo(tab, server)
    tab.select_option("#walk-a", "0")
    tab.select_option("#walk-b", "1")
    tab.select_option("#walk-model", "dense")
    tab.fill("#walk-steps", "5")
    tab.evaluate("() => document.getElementById('walk-strip').replaceChildren()")
    tab.click("#walk")
    tab.wait_for_function("() => document.querySelectorAll('#walk-strip canvas').length === 5", timeout=TIMEOUT_MS)
    frames = tab.evaluate(
        """() => Array.from(document.querySelectorAll('#walk-strip canvas')).map(c =>
             Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0)))"""
    )
    frames = [np.asarray(f, dtype=np.int64).reshape(28, 28) for f in frames]
    for frame, label in ((frames[0], "0"), (frames[-1], "1")):
        x = (digit(label) / 255.0).astype(np.float32).reshape(1, 784)
        code = next(iter(reference.run("dense", "encoder", x).values()))
        decoded = next(iter(reference.run("dense", "decoder", code).values())).reshape(28, 28)
        assert np.abs(frame - np.rint(np.clip(decoded, 0, 1) * 255)).max() <= 1
    assert np.abs(frames[2] - frames[0]).mean() > 1 and np.abs(frames[2] - frames[-1]).mean() > 1
    assert "[32]" in (tab.text_content("#walk-latent") or "")
    record.assert_clean()


def test_docs_render_every_operation_offline(page: tuple[Any, PageRecord], server: str) -> None:
    """Swagger UI at /docs lists every operation of the schema, with nothing fetched from the internet."""
    tab, record = page
    schema = httpx.get(f"{server}/openapi.json", timeout=10).json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    operations = sum(1 for item in schema["paths"].values() for method in item if method in methods)
    tab.goto(server + "/docs")
    tab.wait_for_selector(".opblock", timeout=TIMEOUT_MS)
    tab.wait_for_function(f"() => document.querySelectorAll('.opblock').length >= {operations}", timeout=TIMEOUT_MS)
    assert tab.locator(".opblock").count() == operations
    assert tab.locator(".opblock-summary-path", has_text="/v1/models/{name}/denoise").count() == 1
    record.assert_clean()


@pytest.fixture(scope="module")
def keyed_server(models_dir: Path) -> Iterator[str]:
    """The service with an API key, and the exempt paths the README gives for the demo page."""
    exempt = re.search(r"AE_API_KEY_EXEMPT_PATHS=(\S+?)`", README)
    assert exempt, "README.md no longer says which paths to exempt for the demo page"
    port = free_port()
    env = {
        **os.environ,
        "AE_LOG_LEVEL": "warning",
        "AE_API_KEY": API_KEY,
        "AE_API_KEY_EXEMPT_PATHS": exempt.group(1),
    }
    command = [sys.executable, "-m", "app", "--port", str(port), "--models-dir", str(models_dir)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server was not ready within 60 s"
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_demo_with_an_api_key(chromium: Any, keyed_server: str) -> None:
    """With AE_API_KEY and the README's exempt paths: the page loads, says the key is missing, and works once the
    key is typed into its box; the API itself stays closed without the key."""
    assert httpx.get(f"{keyed_server}/v1/models", timeout=10).status_code == 401
    context = chromium.new_context()
    try:
        tab = context.new_page()
        tab.goto(keyed_server + "/")
        tab.wait_for_selector("#status.error", timeout=TIMEOUT_MS)
        assert "401" in (tab.text_content("#status") or "") or "unauthorized" in (tab.text_content("#status") or "")
        tab.click("details.apikey summary")
        tab.fill("#api-key", API_KEY)
        with tab.expect_navigation():
            tab.press("#api-key", "Enter")
        tab.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        wait_for_output(tab, "denoised", input="sample:3")
        assert read_pixels(tab, "denoised").shape == (28, 28)
    finally:
        context.close()


def test_drawing_a_digit_feeds_the_models(page: tuple[Any, PageRecord], server: str) -> None:
    """A stroke drawn with the mouse becomes the clean input (cropped and centred like MNIST) and is processed."""
    tab, record = page
    open_demo(tab, server)
    tab.click("#clear")
    wait_for_output(tab, "denoised", input="empty")
    assert read_pixels(tab, "clean").max() == 0
    box = tab.locator("#draw").bounding_box()
    assert box is not None
    tab.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=12)
    tab.mouse.up()
    wait_for_output(tab, "denoised", input="drawing")
    wait_for_output(tab, "reconstruction", input="drawing")
    clean = read_pixels(tab, "clean")
    rows, cols = np.nonzero(clean > 25)
    # A vertical bar, fitted in 20x20 and centred: about 20 rows tall, narrow, in the middle columns.
    assert 18 <= rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 8
    assert 10 <= cols.mean() <= 17 and 10 <= rows.mean() <= 17
    assert read_pixels(tab, "denoised").max() > 128, "the denoiser keeps the stroke"
    record.assert_clean()
