"""Denoising through the service (issue 14, serving side): large images in tiles equal to the untiled result, the
noise level given (`?sigma=`) or estimated and always reported, on the committed digit denoiser and on a tiny
model shaped as the photograph denoiser (`x` [N, 3, H, W] and `sigma` [N])."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from app.core.noise import estimate_sigma
from tests.app.conftest import MODELS_DIR, assert_error, load_npy, make_client, npy_bytes
from tests.app.tiny_models import write_sigma_denoiser

NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("photo-models")
    shutil.copytree(MODELS_DIR / "denoise", root / "denoise")
    write_sigma_denoiser(root / "photoish")
    write_sigma_denoiser(root / "photoish-gray", gray=True)
    return root


@pytest.fixture(scope="module")
def tiled(models: Path) -> Iterator[TestClient]:
    with make_client(models_dir=models, tile_size=64) as client:
        yield client


@pytest.fixture(scope="module")
def untiled(models: Path) -> Iterator[TestClient]:
    with make_client(models_dir=models, tile_size=0) as client:
        yield client


def test_the_receptive_radius_is_measured_at_load(tiled: TestClient) -> None:
    graphs = {e.name: e.graphs["full"] for e in tiled.app.state.context.registry.entries()}  # type: ignore[attr-defined]
    assert graphs["photoish"].receptive_radius == 1  # a 3x3 box: exactly one pixel
    assert graphs["denoise"].receptive_radius is not None and 4 <= graphs["denoise"].receptive_radius <= 40
    # Tiles overlap by the radius beyond which the rest of the image moves a pixel by at most AE_TILE_TOLERANCE.
    assert graphs["photoish"].tile_radius == 1  # a box filter's weights are all far above 1e-4
    assert 0 < graphs["denoise"].tile_radius <= graphs["denoise"].receptive_radius
    detail = tiled.get("/v1/models/denoise").json()["graphs"]["full"]
    assert detail["receptive_radius"] == graphs["denoise"].receptive_radius
    assert detail["tile_radius"] == graphs["denoise"].tile_radius


def test_tile_tolerance_zero_tiles_by_the_exact_radius(models: Path) -> None:
    with make_client(models_dir=models, tile_size=64, tile_tolerance=0) as client:
        graph = client.app.state.context.registry.get("denoise").graphs["full"]  # type: ignore[attr-defined]
        assert graph.tile_radius == graph.receptive_radius


@pytest.mark.parametrize(("model", "shape"), [("denoise", (1, 1, 200, 264)), ("photoish", (1, 3, 136, 200))])
def test_a_large_image_in_tiles_equals_the_untiled_result(
    tiled: TestClient, untiled: TestClient, model: str, shape: tuple[int, ...]
) -> None:
    image = np.random.default_rng(3).random(shape, dtype=np.float32)
    query = "?sigma=20" if model == "photoish" else ""
    answers = [
        client.post(f"/v1/models/{model}/denoise{query}", content=npy_bytes(image), headers=NPY)
        for client in (tiled, untiled)
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    got, want = (load_npy(a.content) for a in answers)
    assert got.shape == want.shape == shape
    np.testing.assert_allclose(got, want, atol=1e-3)  # the bound
    assert np.abs(got - want).max() <= 1e-4  # AE_TILE_TOLERANCE, measured on random images like this one


def test_sigma_given_is_fed_and_reported(tiled: TestClient, models: Path) -> None:
    image = np.random.default_rng(4).random((2, 3, 24, 40), dtype=np.float32)
    answer = tiled.post("/v1/models/photoish/denoise?sigma=25", content=npy_bytes(image), headers=NPY)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-sigma"] == "25.00,25.00" and answer.headers["x-sigma-source"] == "given"
    session = ort.InferenceSession(str(models / "photoish" / "full.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": image, "sigma": np.full(2, 25 / 255, dtype=np.float32)})[0]
    np.testing.assert_allclose(load_npy(answer.content), want, atol=1e-6)
    body = tiled.post(
        "/v1/models/photoish/denoise?sigma=25",
        json={"inputs": image[:1].tolist()},
        headers={"accept": "application/json"},
    ).json()
    assert body["sigma"] == [25.0] and body["sigma_source"] == "given"


def test_sigma_unknown_is_estimated_from_each_image(tiled: TestClient, models: Path) -> None:
    rng = np.random.default_rng(5)
    clean = np.tile(np.linspace(0.2, 0.8, 64, dtype=np.float32), (3, 64, 1))
    noisy = np.stack([np.clip(clean + rng.normal(0, s / 255, clean.shape), 0, 1) for s in (10, 40)]).astype(np.float32)
    body = tiled.post("/v1/models/photoish/denoise", json={"inputs": noisy.tolist()}).json()
    assert body["sigma_source"] == "estimated"
    assert body["sigma"] == pytest.approx([estimate_sigma(img, channel_axis=0) * 255 for img in noisy], abs=0.01)
    assert body["sigma"][0] == pytest.approx(10, abs=2) and body["sigma"][1] == pytest.approx(40, abs=4)
    session = ort.InferenceSession(str(models / "photoish" / "full.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": noisy, "sigma": np.array(body["sigma"], dtype=np.float32) / 255})[0]
    np.testing.assert_allclose(np.array(body["denoised"]), want, atol=1e-3)


def test_sigma_is_refused_where_the_model_takes_none(tiled: TestClient) -> None:
    image = np.zeros((1, 1, 16, 16), dtype=np.float32)
    assert_error(tiled.post("/v1/models/denoise/denoise?sigma=25", content=npy_bytes(image), headers=NPY), 422)
    assert_error(tiled.post("/v1/models/photoish/denoise?sigma=300", content=npy_bytes(image), headers=NPY), 422)


def _v2_infer(client: TestClient, name: str, x: np.ndarray, sigma: float) -> np.ndarray:
    """The Open Inference Protocol's answer of model `name` on image `x` and noise level `sigma` (0..1)."""
    body = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "sigma", "shape": [1], "datatype": "FP32", "data": [sigma]},
        ]
    }
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(x.shape)


def test_the_open_inference_protocol_feeds_both_inputs(tiled: TestClient, models: Path) -> None:
    image = np.random.default_rng(6).random((1, 3, 16, 24), dtype=np.float32)
    got = _v2_infer(tiled, "photoish", image, 0.1)
    session = ort.InferenceSession(str(models / "photoish" / "full.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": image, "sigma": np.array([0.1], dtype=np.float32)})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def _upload(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options: object) -> bytes:
    from io import BytesIO

    from PIL import Image

    image = Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)
    buffer = BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _open(data: bytes):  # type: ignore[no-untyped-def]
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(data))


def _expected(models: Path, rgb: np.ndarray, sigma_255: float) -> np.ndarray:
    """What ORT computes on the upload as the service feeds it: [3, H, W] / 255 and sigma / 255."""
    session = ort.InferenceSession(str(models / "photoish" / "full.onnx"), providers=["CPUExecutionProvider"])
    x = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    return session.run(None, {"x": x, "sigma": np.array([sigma_255 / 255], dtype=np.float32)})[0][0]


def test_a_colour_photo_comes_back_in_colour_in_its_own_format(tiled: TestClient, models: Path) -> None:
    rgb = np.random.default_rng(7).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    answer = tiled.post(
        "/v1/models/photoish/denoise?sigma=30", content=_upload(rgb), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png" and answer.headers["x-sigma-source"] == "given"
    image = _open(answer.content)
    assert image.mode == "RGB" and image.size == (56, 40)
    want = np.rint(np.clip(_expected(models, rgb, 30), 0, 1) * 255).transpose(1, 2, 0)
    assert np.abs(np.asarray(image).astype(int) - want.astype(int)).max() <= 1
    jpeg = tiled.post(
        "/v1/models/photoish/denoise", content=_upload(rgb, "JPEG", quality=95), headers={"content-type": "image/jpeg"}
    )
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert _open(jpeg.content).format == "JPEG" and jpeg.headers["x-sigma-source"] == "estimated"
    webp = tiled.post(
        "/v1/models/photoish/denoise", content=_upload(rgb, "WEBP"), headers={"content-type": "image/webp"}
    )
    assert webp.headers["content-type"] == "image/webp"
    asked = tiled.post(
        "/v1/models/photoish/denoise",
        content=_upload(rgb, "JPEG"),
        headers={"content-type": "image/jpeg", "accept": "image/png"},
    )
    assert asked.headers["content-type"] == "image/png" and _open(asked.content).format == "PNG"


def test_gray_in_gray_out_16_bit_and_alpha_kept(tiled: TestClient) -> None:
    gray = np.random.default_rng(8).integers(0, 256, (24, 32), dtype=np.uint8)
    answer = tiled.post(
        "/v1/models/photoish/denoise?sigma=10", content=_upload(gray), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200 and _open(answer.content).mode == "L"
    gray16 = np.random.default_rng(9).integers(0, 65536, (24, 32), dtype=np.uint16)
    deep = tiled.post(
        "/v1/models/photoish/denoise?sigma=10", content=_upload(gray16), headers={"content-type": "image/png"}
    )
    assert deep.status_code == 200 and _open(deep.content).mode.startswith("I")
    rgba = np.random.default_rng(10).integers(0, 256, (24, 32, 4), dtype=np.uint8)
    alpha = tiled.post(
        "/v1/models/photoish/denoise?sigma=10",
        content=_upload(rgba, mode="RGBA"),
        headers={"content-type": "image/png"},
    )
    image = _open(alpha.content)
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[..., 3], rgba[..., 3])
    body = tiled.post(
        "/v1/models/photoish/denoise?sigma=10",
        files=[
            ("file", ("a.png", _upload(gray), "image/png")),
            ("file", ("b.png", _upload(rgba[..., :3]), "image/png")),
        ],
        headers={"accept": "application/json"},
    ).json()
    assert body["shapes"] == [[1, 24, 32], [3, 24, 32]]  # each upload as it came: gray, colour


def _graph(models: Path, role: str, x: np.ndarray, sigma_255: float) -> np.ndarray:
    """ONNX Runtime's answer of photoish-gray's `role` graph on `x` at one noise level."""
    session = ort.InferenceSession(str(models / "photoish-gray" / f"{role}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "sigma": np.full(len(x), sigma_255 / 255, dtype=np.float32)})[0]


def test_a_gray_specialist_runs_gray_images_and_the_full_graph_colour_ones(tiled: TestClient, models: Path) -> None:
    """A model with a `gray` graph (photo's gray specialist): a gray upload, and an array image of 3 identical
    channels, run through it on one channel; colour images through `full`; a batch mixing both, each through its
    own graph."""
    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    body = tiled.post(
        "/v1/models/photoish-gray/denoise?sigma=20",
        content=_upload(gray),
        headers={"content-type": "image/png", "accept": "application/json"},
    ).json()
    got = np.array(body["denoised"], dtype=np.float32).reshape(24, 32)
    want = _graph(models, "gray", (gray / 255.0).astype(np.float32)[None, None], 20)[0, 0]
    colour_graph = _graph(models, "full", np.repeat((gray / 255.0).astype(np.float32)[None, None], 3, 1), 20)
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(got - colour_graph[0].mean(0)).max() > 0.01  # gain 8, not 4: the gray graph ran
    image = _open(
        tiled.post(
            "/v1/models/photoish-gray/denoise?sigma=20", content=_upload(gray), headers={"content-type": "image/png"}
        ).content
    )
    assert image.mode == "L" and np.abs(np.asarray(image) - np.rint(want * 255)).max() <= 1

    plane = rng.random((24, 32), dtype=np.float32)
    batch = np.stack([np.stack([plane] * 3), rng.random((3, 24, 32), dtype=np.float32)])
    answer = tiled.post("/v1/models/photoish-gray/denoise?sigma=30", content=npy_bytes(batch), headers=NPY)
    assert answer.status_code == 200, answer.text
    out = load_npy(answer.content)
    assert out.shape == batch.shape
    np.testing.assert_allclose(out[0], np.repeat(_graph(models, "gray", batch[:1, :1], 30)[0], 3, 0), atol=1e-6)
    np.testing.assert_allclose(out[1], _graph(models, "full", batch[1:], 30)[0], atol=1e-6)
    alone = load_npy(
        tiled.post("/v1/models/photoish-gray/denoise?sigma=30", content=npy_bytes(batch[:1]), headers=NPY).content
    )
    np.testing.assert_allclose(alone, out[:1], atol=1e-6)  # a gray image alone: the same answer


def test_the_gray_graph_tiles_and_is_served_by_name(tiled: TestClient, untiled: TestClient, models: Path) -> None:
    """A large gray image runs in tiles of the gray graph, equal to the untiled answer; the graph has its measured
    receptive radius, shows in the model's detail and answers the Open Inference Protocol as `<model>.gray`."""
    plane = np.random.default_rng(12).random((136, 200), dtype=np.float32)
    image = np.broadcast_to(plane, (1, 3, 136, 200)).copy()
    answers = [
        load_npy(c.post("/v1/models/photoish-gray/denoise?sigma=25", content=npy_bytes(image), headers=NPY).content)
        for c in (tiled, untiled)
    ]
    want = _graph(models, "gray", image[:, :1], 25)
    assert np.abs(answers[0] - answers[1]).max() <= 1e-4
    np.testing.assert_allclose(answers[1], np.repeat(want, 3, 1), atol=1e-6)
    detail = tiled.get("/v1/models/photoish-gray").json()["graphs"]
    assert set(detail) == {"full", "gray"} and detail["gray"]["receptive_radius"] == 1
    x = np.ascontiguousarray(image[:, :1, :16, :24])
    got = _v2_infer(tiled, "photoish-gray.gray", x, 0.1)
    np.testing.assert_allclose(got, _graph(models, "gray", x, 25.5), atol=1e-6)


def test_the_noise_estimate_of_a_large_image_reads_a_sample_of_it() -> None:
    """Above a megapixel per channel the estimate reads a grid of blocks (bounded memory and time) and still
    tracks the truth: a 2400 x 1800 smooth image with sigma 20 noise, 8-bit rounded."""
    from app.core.noise import MAX_SAMPLE_PIXELS, _blocks

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:1800, 0:2400]
    clean = 0.5 + 0.3 * np.sin(xx / 150.0) * np.cos(yy / 210.0)
    noisy = np.clip(np.round((clean + rng.normal(0, 20 / 255, clean.shape)) * 255) / 255, 0, 1).astype(np.float32)
    blocks = _blocks(noisy, MAX_SAMPLE_PIXELS)
    assert len(blocks) > 1 and sum(b.size for b in blocks) <= MAX_SAMPLE_PIXELS
    assert all(np.shares_memory(b, noisy) for b in blocks)  # views, no copy of the image
    estimate = estimate_sigma(noisy) * 255
    assert abs(estimate - 20) < 1.0
    assert abs(estimate - estimate_sigma(noisy[:1000, :1000]) * 255) < 1.0


def _smooth_png(width: int, height: int) -> bytes:
    """A colour gradient: a small PNG body for a large image (the pixels, not the body, are what costs memory)."""
    row = np.linspace(0, 255, width, dtype=np.float32)
    col = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.dstack([np.broadcast_to(row, (height, width)), np.broadcast_to(col, (height, width)), (row + col) / 2])
    return _upload(rgb.astype(np.uint8))


def test_large_photographs_take_turns_in_the_image_memory_budget(models: Path, tmp_path: Path) -> None:
    """A real server with a 680 MiB image budget and no waiting: a 16-megapixel photograph (~640 MiB held while
    it is denoised) holds it; a 2.4-megapixel one arriving meanwhile gets 503 + Retry-After naming the budget and
    succeeds once the first is answered; one that could never fit (20 megapixels) is 413 before decoding."""
    import threading
    import time

    import httpx

    from app.core.images import PHOTO_BYTES_PER_PIXEL
    from tests.app.live import running

    env = {
        "AE_IMAGE_MEMORY_BUDGET_BYTES": str(680 * 1024 * 1024),
        "AE_MEMORY_WAIT_SECONDS": "0",
        "AE_TILE_SIZE": "256",
        "AE_RETRY_AFTER_SECONDS": "3",
    }
    big, small = _smooth_png(4096, 4096), _smooth_png(1536, 1536)
    assert 4096 * 4096 * PHOTO_BYTES_PER_PIXEL <= 680 * 1024 * 1024 < (4096**2 + 1536**2) * PHOTO_BYTES_PER_PIXEL
    headers = {"content-type": "image/png"}
    with running(models, tmp_path / "server.log", env) as server:
        url = f"{server.base}/v1/models/photoish/denoise?sigma=10"
        first: dict[str, object] = {}

        def send_big() -> None:
            started = time.monotonic()
            response = httpx.post(url, content=big, headers=headers, timeout=120)
            first.update(status=response.status_code, seconds=time.monotonic() - started, body=response.content)

        thread = threading.Thread(target=send_big)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), "the 16-megapixel request must still be running for this test to mean anything"
        refused = httpx.post(url, content=small, headers=headers, timeout=60)
        error = assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "3"
        assert "image memory" in error["message"] and error["details"]["budget"] == "image memory"
        thread.join(120)
        assert first["status"] == 200, first
        answer = _open(first["body"])  # type: ignore[arg-type]
        assert answer.size == (4096, 4096) and answer.mode == "RGB"
        assert httpx.post(url, content=small, headers=headers, timeout=60).status_code == 200
        never = httpx.post(url, content=_smooth_png(5000, 4000), headers=headers, timeout=60)
        error = assert_error(never, 413, "payload_too_large")
        assert error["details"]["budget"] == "image memory"
        assert httpx.get(f"{server.base}/readyz").status_code == 200


def test_the_short_route_denoises_photographs_and_the_setting_restores_digits() -> None:
    """`/v1/denoise` uses the committed `photo` model (colour in, colour out, sigma estimated);
    `AE_DEFAULT_DENOISE_MODEL=denoise` puts the digit denoiser back behind it."""
    rgb = np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with make_client() as client:
        answer = client.post("/v1/denoise", content=_upload(rgb), headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model"] == "photo" and answer.headers["x-sigma-source"] == "estimated"
        assert _open(answer.content).mode == "RGB"
    with make_client(default_denoise_model="denoise") as client:
        answer = client.post("/v1/denoise", content=_upload(rgb), headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model"] == "denoise" and "x-sigma" not in answer.headers
        assert _open(answer.content).mode == "L"  # the digit denoiser works in gray
