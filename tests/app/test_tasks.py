"""Every endpoint x every model x every input and output format, each checked against a direct ONNX Runtime
call on the same input (within 1e-5)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.cards import window_starts
from app.core.noise import estimate_sigma
from app.core.tasks import TASKS
from tests.app.conftest import (
    CARDS,
    EXPECTED_MODELS,
    MODEL_TASKS,
    TASK_GRAPH,
    TOLERANCE,
    Reference,
    load_npy,
    npy_bytes,
    png_bytes,
    sample_input,
    task_params,
)

PRIMARY = {name: task.main_output for name, task in TASKS.items()}


def expected(reference: Reference, model: str, task: str, x: np.ndarray) -> dict[str, Any]:
    """What the service must answer, computed with plain ONNX Runtime calls."""
    card = CARDS[model]
    graph = TASK_GRAPH[task]
    if task == "score" and card["input"]["layout"] == "sequence":
        sequence = card["input"]["sequence"]
        steps = x.shape[1]
        length = min(steps, sequence["window"])
        starts = window_starts(steps, sequence["window"], sequence["stride"])
        per_window = np.stack(
            [reference.run(model, "full", np.ascontiguousarray(x[:, s : s + length]))["score"] for s in starts], axis=1
        )
        threshold = card["anomaly"]["threshold"]
        scores = per_window.max(axis=1)
        return {
            "scores": scores,
            "anomalous": scores > threshold,
            "per_window": per_window,
            "starts": starts,
            "length": length,
        }
    if task == "predict":
        window = card["forecast"]["window"]
        return {"forecast": reference.run(model, graph, np.ascontiguousarray(x[:, -window:]))["forecast"]}
    if task == "denoise" and any(i["name"] == "sigma" for i in card["graphs"][graph]["inputs"]):
        # The photograph denoiser takes the noise level too: blind requests get it estimated on each image.
        sigma = np.array([estimate_sigma(image, channel_axis=0) for image in x], dtype=np.float32)
        return {"denoised": reference.run(model, graph, x, sigma=sigma)["denoised"]}
    out = reference.run(model, graph, x)
    if task == "encode":
        return {"latent": out[card["graphs"]["encoder"]["outputs"][0]["name"]]}
    if task == "decode":
        return {"reconstruction": out[card["graphs"]["decoder"]["outputs"][0]["name"]]}
    if task == "reconstruct":
        return {"reconstruction": out["reconstruction"], "scores": out["score"]}
    if task == "score":
        return {"scores": out["score"], "anomalous": out["score"] > card["anomaly"]["threshold"]}
    return {"denoised": out["denoised"]}


def close(got: Any, want: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_every_expected_model_is_served(client: TestClient) -> None:
    """The committed models are the nine the project ships, all loaded; a missing one fails here."""
    assert set(CARDS) == EXPECTED_MODELS
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(listed) == EXPECTED_MODELS
    assert all(m["status"] == "ready" for m in listed.values()), listed
    covered_tasks = {task for _, task in MODEL_TASKS}
    assert covered_tasks == set(TASK_GRAPH)


@pytest.mark.parametrize(("model", "task"), task_params())
def test_json_in_json_out(client: TestClient, reference: Reference, model: str, task: str) -> None:
    x = sample_input(model, task)
    response = client.post(f"/v1/models/{model}/{task}", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    TASKS[task].response.model_validate(body)  # the documented schema is the real one
    assert (body["model"], body["task"], body["model_version"]) == (model, task, CARDS[model]["version"])
    want = expected(reference, model, task, x)
    for key, value in want.items():
        if key in body:
            if key == "anomalous":
                assert body[key] == value.tolist()
            else:
                close(body[key], value)
    if "shape" in want or task in ("encode", "decode", "reconstruct", "predict"):
        assert body["shape"] == list(want[PRIMARY[task]].shape)


@pytest.mark.parametrize(("model", "task"), task_params())
def test_npy_in_npy_out(client: TestClient, reference: Reference, model: str, task: str) -> None:
    x = sample_input(model, task, batch=5, seed=1)
    response = client.post(
        f"/v1/models/{model}/{task}",
        content=npy_bytes(x),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    got = load_npy(response.content)
    assert got.dtype == np.float32
    close(got, expected(reference, model, task, x)[PRIMARY[task]])


@pytest.mark.parametrize(("model", "task"), task_params())
def test_json_in_npz_out(client: TestClient, reference: Reference, model: str, task: str) -> None:
    x = sample_input(model, task, batch=2, seed=2)
    response = client.post(
        f"/v1/models/{model}/{task}", json={"inputs": x.tolist()}, headers={"accept": "application/x-npz"}
    )
    assert response.status_code == 200, response.text
    archive = np.load(io.BytesIO(response.content), allow_pickle=False)
    want = expected(reference, model, task, x)
    assert PRIMARY[task] in archive.files
    for key in archive.files:
        if key == "anomalous":
            assert archive[key].tolist() == want[key].tolist()
        else:
            close(archive[key], want[key])
    assert zipfile.is_zipfile(io.BytesIO(response.content))


# Gray image models (preprocessed, resized): colour ones (the photograph denoiser) take uploads as they are and have
# their own tests (tests/app/test_denoise_photos.py, test_colour_images.py, tests/browser/test_photo_mode.py).
IMAGE_PAIRS = [
    (name, task)
    for name, task in MODEL_TASKS
    if CARDS[name]["input"]["layout"] in ("vector", "image")
    and task != "decode"
    and (CARDS[name]["input"].get("image") or {}).get("channels", 1) != 3
]


def model_side(model: str) -> tuple[int, int]:
    image = CARDS[model]["input"]["image"]
    return (image["height"] or 30, image["width"] or 45)


def as_model_input(model: str, task: str, pixels_u8: np.ndarray) -> np.ndarray:
    """The tensor the model must see for an uploaded 8-bit image at its own size: u8 / 255 in its shape."""
    x = (pixels_u8.astype(np.float64) / 255.0).astype(np.float32)
    shape = CARDS[model]["graphs"][TASK_GRAPH[task]]["inputs"][0]["shape"]
    if len(shape) == 2:
        return x.reshape(1, -1)
    return x[None, None]


@pytest.mark.parametrize(("model", "task"), [pytest.param(m, t, id=f"{m}-{t}") for m, t in IMAGE_PAIRS])
@pytest.mark.parametrize("transport", ["multipart", "raw"])
def test_image_upload_json_out(client: TestClient, reference: Reference, model: str, task: str, transport: str) -> None:
    height, width = model_side(model)
    pixels = np.random.default_rng(3).integers(0, 256, size=(height, width), dtype=np.uint8)
    data = png_bytes(pixels)
    url = f"/v1/models/{model}/{task}"
    headers = {"accept": "application/json"}
    if transport == "multipart":
        response = client.post(url, files={"file": ("digit.png", data, "image/png")}, headers=headers)
    else:
        response = client.post(url, content=data, headers={**headers, "content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    TASKS[task].response.model_validate(body)
    report = body["inputs"][0]
    assert report["format"] == "PNG" and report["size"] == [width, height]
    assert report["preprocess"] in ("resize", "none") and "resized" not in report
    want = expected(reference, model, task, as_model_input(model, task, pixels))
    key = PRIMARY[task]
    close(body[key], want[key])


PNG_PAIRS = [(name, task) for name, task in IMAGE_PAIRS if task in ("reconstruct", "denoise")] + [
    (name, "decode")
    for name, card in CARDS.items()
    if "decode" in card["tasks"] and card["input"]["layout"] != "sequence"
]


@pytest.mark.parametrize(("model", "task"), [pytest.param(m, t, id=f"{m}-{t}") for m, t in PNG_PAIRS])
def test_png_out(client: TestClient, reference: Reference, model: str, task: str) -> None:
    """One image back as an 8-bit grayscale PNG: the model output rounded to 256 levels."""
    if task == "decode":
        x = sample_input(model, task, batch=1, seed=4)
        response = client.post(
            f"/v1/models/{model}/{task}", json={"inputs": x.tolist()}, headers={"accept": "image/png"}
        )
    else:
        height, width = model_side(model)
        pixels = np.random.default_rng(4).integers(0, 256, size=(height, width), dtype=np.uint8)
        x = as_model_input(model, task, pixels)
        response = client.post(
            f"/v1/models/{model}/{task}",
            files={"file": ("in.png", png_bytes(pixels), "image/png")},
            headers={"accept": "image/png"},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "L"
    got = np.asarray(image).astype(np.int16)
    want = expected(reference, model, task, x)[PRIMARY[task]]
    want_u8 = np.rint(np.clip(want.reshape(got.shape), 0, 1) * 255).astype(np.int16)
    # Rounding at exactly .5 may differ by one level when the two results differ in the last bits.
    assert np.abs(got - want_u8).max() <= 1
    assert (got == want_u8).mean() > 0.99
    if task == "reconstruct":
        assert (
            abs(float(response.headers["x-score"]) - float(expected(reference, model, task, x)["scores"][0]))
            <= TOLERANCE
        )


def test_denoise_png_same_size_as_upload(client: TestClient, reference: Reference) -> None:
    """The default denoiser is fully convolutional: any size runs natively and comes back the same size."""
    for height, width in ((28, 28), (30, 45), (61, 17), (4, 4)):
        pixels = np.random.default_rng(height).integers(0, 256, size=(height, width), dtype=np.uint8)
        response = client.post("/v1/models/denoise/denoise", files={"file": ("n.png", png_bytes(pixels), "image/png")})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"  # an image upload is answered with an image
        out = Image.open(io.BytesIO(response.content))
        assert out.size == (width, height)
        assert response.headers["x-image-size"] == f"{width}x{height}"
        assert response.headers["x-model-input-size"] == f"{width}x{height}"
        assert response.headers["x-resize"].startswith("none")
        want = reference.run("denoise", "full", as_model_input("denoise", "denoise", pixels))["denoised"][0, 0]
        assert np.abs(np.asarray(out).astype(int) - np.rint(want * 255).astype(int)).max() <= 1


def test_denoise_several_sizes_in_one_upload(client: TestClient, reference: Reference) -> None:
    """Images of different sizes run one by one; JSON returns each at its size, .npy is refused (406)."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in ((28, 28), (12, 20), (28, 28))]
    files = [("file", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(images)]
    response = client.post("/v1/models/denoise/denoise", files=files, headers={"accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] is None and body["shapes"] == [[1, 28, 28], [1, 12, 20], [1, 28, 28]]
    for got, pixels in zip(body["denoised"], images, strict=True):
        want = reference.run("denoise", "full", as_model_input("denoise", "denoise", pixels))["denoised"][0]
        close(got, want)
    refused = client.post("/v1/models/denoise/denoise", files=files, headers={"accept": "application/x-npy"})
    assert refused.status_code == 406 and "differ in size" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "model", [m for m, c in CARDS.items() if "score" in c["tasks"] and c["input"]["layout"] == "sequence"]
)
def test_long_series_scored_in_sliding_windows(client: TestClient, reference: Reference, model: str) -> None:
    sequence = CARDS[model]["input"]["sequence"]
    steps = sequence["window"] * 2 + sequence["stride"] // 2 + 7  # not a multiple: the last window is extra
    x = np.random.default_rng(6).normal(size=(2, steps, sequence["channels"])).astype(np.float32)
    body = client.post(f"/v1/models/{model}/score", json={"inputs": x.tolist()}).json()
    want = expected(reference, model, "score", x)
    assert body["window"] == {"length": sequence["window"], "stride": sequence["stride"]}
    for series, windows in enumerate(body["windows"]):
        assert [w["start"] for w in windows] == want["starts"]
        assert all(w["end"] - w["start"] == sequence["window"] for w in windows)
        assert windows[-1]["end"] == steps  # the last window ends at the series' end
        close([w["score"] for w in windows], want["per_window"][series])
        worst = int(np.argmax(want["per_window"][series]))
        assert body["worst_window"][series]["start"] == want["starts"][worst]
    close(body["scores"], want["scores"])
    assert body["anomalous"] == want["anomalous"].tolist()


def test_predict_reads_the_last_window(client: TestClient, reference: Reference) -> None:
    window = CARDS["lstm-forecast"]["forecast"]["window"]
    x = np.random.default_rng(7).normal(size=(2, window + 15, 6)).astype(np.float32)
    body = client.post("/v1/predict", json={"inputs": x.tolist()}).json()
    assert body["steps_used"] == window and body["notes"]
    assert body["channel_names"] == CARDS["lstm-forecast"]["input"]["sequence"]["channel_names"]
    close(body["forecast"], reference.run("lstm-forecast", "full", np.ascontiguousarray(x[:, -window:]))["forecast"])


ALIASES = {
    "encode": "dense",
    "decode": "dense",
    "reconstruct": "dense",
    "score": "dense",
    "denoise": "photo",
    "predict": "lstm-forecast",
}


@pytest.mark.parametrize(("task", "model"), ALIASES.items())
def test_alias_routes_serve_the_default_model(client: TestClient, task: str, model: str) -> None:
    x = sample_input(model, task, batch=2, seed=8)
    via_alias = client.post(f"/v1/{task}", json={"inputs": x.tolist()})
    direct = client.post(f"/v1/models/{model}/{task}", json={"inputs": x.tolist()})
    assert via_alias.status_code == direct.status_code == 200
    assert via_alias.json() == direct.json()


def test_alias_defaults_are_configurable(reference: Reference) -> None:
    from tests.app.conftest import make_client

    with make_client(default_encode_model="conv") as c:
        x = sample_input("conv", "encode", batch=1)
        body = c.post("/v1/encode", json={"inputs": x.tolist()}).json()
        assert body["model"] == "conv"
        close(body["latent"], expected(reference, "conv", "encode", x)["latent"])


@pytest.mark.parametrize(
    ("model", "sample_shape"),
    [("dense", (28, 28)), ("conv", (784,)), ("conv", (28, 28)), ("conv", (1, 28, 28)), ("denoise", (9, 13))],
)
def test_accepted_sample_shapes(client: TestClient, reference: Reference, model: str, sample_shape: tuple) -> None:
    """Flat vectors, [H][W] images and the model's own shape all reach the model as the same tensor."""
    task = "denoise" if model == "denoise" else "encode"
    x = np.random.default_rng(9).uniform(0, 1, size=(2, *sample_shape)).astype(np.float32)
    body = client.post(f"/v1/models/{model}/{task}", json={"inputs": x.tolist()}).json()
    spec = CARDS[model]["graphs"][TASK_GRAPH[task]]["inputs"][0]["shape"]
    model_shape = (2, 1, *sample_shape) if model == "denoise" else (2, *spec[1:])
    close(body[PRIMARY[task]], expected(reference, model, task, x.reshape(model_shape))[PRIMARY[task]])


def test_big_batch_matches_rows_alone(client: TestClient, reference: Reference) -> None:
    """A row computed inside a batch equals the same row alone within the tolerance."""
    x = sample_input("dense", "encode", batch=64, seed=10)
    batch = np.asarray(client.post("/v1/encode", json={"inputs": x.tolist()}).json()["latent"])
    for i in (0, 31, 63):
        alone = np.asarray(client.post("/v1/encode", json={"inputs": x[i : i + 1].tolist()}).json()["latent"])[0]
        np.testing.assert_allclose(batch[i], alone, atol=TOLERANCE)


def _requests(model: str, task: str) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Every input format this model and task accept, each with the tensor the model must see (one sample)."""
    formats: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    x = sample_input(model, task, batch=1, seed=11)
    formats["json"] = ({"json": {"inputs": x.tolist()}}, x)
    formats["npy"] = ({"content": npy_bytes(x), "headers": {"content-type": "application/x-npy"}}, x)
    if (model, task) in IMAGE_PAIRS:
        height, width = model_side(model)
        pixels = np.random.default_rng(12).integers(0, 256, size=(height, width), dtype=np.uint8)
        image = as_model_input(model, task, pixels)
        data = png_bytes(pixels)
        formats["multipart"] = ({"files": {"file": ("x.png", data, "image/png")}}, image)
        formats["raw-image"] = ({"content": data, "headers": {"content-type": "image/png"}}, image)
    return formats


OUTPUTS = ["application/json", "application/x-npy", "application/x-npz", "image/png"]


@pytest.mark.parametrize(("model", "task"), task_params())
def test_every_input_format_with_every_output_format(
    client: TestClient, reference: Reference, model: str, task: str
) -> None:
    """The full matrix for one sample: each accepted body format x each response format (PNG where the
    output is an image; 406 where it is not)."""
    png_possible = task in ("decode", "reconstruct", "denoise") and CARDS[model]["input"]["layout"] != "sequence"
    for input_format, (kwargs, x) in _requests(model, task).items():
        want = expected(reference, model, task, x)[PRIMARY[task]]
        for accept in OUTPUTS:
            headers = {**kwargs.get("headers", {}), "accept": accept}
            call = {k: v for k, v in kwargs.items() if k != "headers"}
            response = client.post(f"/v1/models/{model}/{task}", headers=headers, **call)
            where = f"{input_format} -> {accept}"
            if accept == "image/png" and not png_possible:
                assert response.status_code == 406, where
                continue
            assert response.status_code == 200, (where, response.text)
            assert response.headers["content-type"] == accept, where
            if accept == "application/json":
                got = response.json()[PRIMARY[task]]
            elif accept == "application/x-npy":
                got = load_npy(response.content)
            elif accept == "application/x-npz":
                got = np.load(io.BytesIO(response.content), allow_pickle=False)[PRIMARY[task]]
            else:
                image = np.asarray(Image.open(io.BytesIO(response.content))).astype(int)
                pixels = want[0].transpose(1, 2, 0) if want.ndim == 4 and want.shape[1] == 3 else want
                want_u8 = np.rint(np.clip(pixels.reshape(image.shape), 0, 1) * 255).astype(int)
                assert np.abs(image - want_u8).max() <= 1, where
                continue
            got = np.asarray(got, dtype=np.float64)
            assert got.shape == want.shape, where
            np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=where)


def test_window_starts_covers_the_series_and_ends_at_its_end() -> None:
    """The one sliding-window rule serving and training share (app.core.cards.window_starts), on explicit cases."""
    assert window_starts(30, 50, 10) == [0]  # shorter than a window: one window
    assert window_starts(50, 50, 10) == [0]
    assert window_starts(100, 50, 10) == [0, 10, 20, 30, 40, 50]
    assert window_starts(105, 50, 10) == [0, 10, 20, 30, 40, 50, 55]  # the last one ends at the end
