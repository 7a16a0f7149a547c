"""End to end against a real uvicorn process on 127.0.0.1 (`python -m app`), started and stopped here."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import REPO, TOLERANCE, Reference, png_bytes
from tests.app.live import running


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running(models_dir, log, {"AE_LOG_LEVEL": "warning"}) as live:
        yield live.base


def test_multipart_upload_to_png(server: str, reference: Reference) -> None:
    """Upload a noisy digit-sized image, get the denoised PNG of the same size back."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(45, 30), dtype=np.uint8)
    response = httpx.post(
        f"{server}/v1/models/denoise/denoise",
        files={"file": ("noisy.png", png_bytes(pixels), "image/png")},
        headers={"x-request-id": "e2e-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-request-id"] == "e2e-1"
    assert response.headers["x-image-size"] == "30x45"
    out = Image.open(io.BytesIO(response.content))
    assert out.format == "PNG" and out.size == (30, 45) and out.mode == "L"
    x = (pixels / 255.0).astype(np.float32)[None, None]
    want = np.rint(np.clip(reference.run("denoise", "full", x)["denoised"][0, 0], 0, 1) * 255)
    assert np.abs(np.asarray(out).astype(int) - want.astype(int)).max() <= 1


def test_reconstruct_png_of_an_upload(server: str, reference: Reference) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(28, 28), dtype=np.uint8)
    response = httpx.post(
        f"{server}/v1/models/conv/reconstruct",
        files={"file": ("d.png", png_bytes(pixels), "image/png")},
        headers={"accept": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    want = reference.run("conv", "full", (pixels / 255.0).astype(np.float32)[None, None])
    assert abs(float(response.headers["x-score"]) - float(want["score"][0])) <= TOLERANCE


def test_json_and_health_over_the_wire(server: str, reference: Reference) -> None:
    x = np.random.default_rng(2).uniform(0, 1, size=(4, 784)).astype(np.float32)
    response = httpx.post(f"{server}/v1/encode", json={"inputs": x.tolist()}, timeout=30)
    np.testing.assert_allclose(
        np.asarray(response.json()["latent"]), reference.run("dense", "encoder", x)["z"], atol=TOLERANCE
    )
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert "ae_http_requests_total" in httpx.get(f"{server}/metrics").text
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert httpx.get(f"{server}/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_concurrent_requests_to_several_models(server: str, reference: Reference) -> None:
    """Many requests in flight at once across models: every answer is the right one (sessions are shared)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    jobs = []
    for i in range(24):
        model, graph, shape = [
            ("dense", "encoder", (3, 784)),
            ("conv", "encoder", (2, 1, 28, 28)),
            ("lstm", "encoder", (2, 30, 6)),
        ][i % 3]
        jobs.append((model, graph, rng.uniform(0, 1, size=shape).astype(np.float32)))

    def call(job: tuple) -> np.ndarray:
        model, _, x = job
        response = httpx.post(f"{server}/v1/models/{model}/encode", json={"inputs": x.tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["latent"])

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(call, jobs))
    for (model, graph, x), got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, reference.run(model, graph, x)["z"], atol=TOLERANCE)


def test_command_line_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    for flag in ("--host", "--port", "--workers", "--models-dir", "--log-level"):
        assert flag in result.stdout
