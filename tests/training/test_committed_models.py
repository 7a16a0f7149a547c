"""The committed models in models/: files match their cards, and the cards' metrics hold on the test split.

Every number checked here is recomputed with ONNX Runtime from the committed ONNX files on the held-out
test data, so a regressed or hand-edited model cannot be committed silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training import registry
from training.baselines import PCA, add_noise, median3x3, mse, psnr, roc_auc
from training.data.mnist import load_mnist
from training.data.timeseries import load_basic_motions
from training.export import PARITY_TOL, sha256_file
from training.models.lstm_forecast import make_pairs
from training.models.sequence import window_starts

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# `photo` trains for hours outside `make train` (issue 14): its folder is checked once it is committed.
NAMES = [n for n in registry.MODELS if n in registry.ALL or (MODELS_DIR / n / "card.json").exists()]


def card_of(name: str) -> dict:
    return json.loads((MODELS_DIR / name / "card.json").read_text())


def session(name: str, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(MODELS_DIR / name / card_of(name)["graphs"][graph]["file"]), providers=["CPUExecutionProvider"]
    )


def run_batched(sess: ort.InferenceSession, x: np.ndarray, output: int = 0, batch: int = 250) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[output] for i in range(0, len(x), batch)])


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def motions():
    return load_basic_motions()


def test_every_registered_model_is_committed():
    committed = {p.parent.name for p in MODELS_DIR.glob("*/card.json")}
    assert set(registry.ALL) <= committed <= set(registry.MODELS)
    readme = (MODELS_DIR / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in NAMES)


def test_photo_is_committed():
    if not (MODELS_DIR / "photo" / "card.json").exists():
        pytest.skip("models/photo is not committed yet: its training (make train-photo) is still running")
    assert "photo" in NAMES


def test_photo_is_trained_on_the_bundled_photographs_and_checked_on_the_others():
    """Issue 14's data rule on the shipped model: trained on photographs bundled in scikit-image and scikit-learn
    only, never on a held-out one; the other photographs (Debian's) are measured in the card as a check."""
    from training.data.photos import DEBIAN_PHOTOS, HELD_OUT, TRAIN_PHOTOS

    card = json.loads((MODELS_DIR / "photo" / "card.json").read_text())
    trained = set(card["data"]["train_photo_names"])
    assert trained and trained <= set(TRAIN_PHOTOS) and not trained & set(HELD_OUT)
    assert card["data"]["debian_photos"] == {} and card["training"]["config"]["debian"] is False
    check = card["metrics"]["check_photos"]
    assert check["photos"] and set(check["photos"]) <= set(DEBIAN_PHOTOS)
    for s in ("15", "25", "50"):
        for kind in ("gray", "colour"):
            assert {"model_blind", "noisy_input", "nl_means", "bm3d"} <= set(check["by_sigma"][s][kind])


# Quality gates a committed model does not reach yet, reported in its card with the gap (the gate is never lowered):
# `photo` after 180 minutes of training on 2 cores on the bundled photographs (issue 14) is below BM3D at sigma 15
# and 25 and below NL-means + 0.5 dB at sigma 15, gray and colour (it beats both at sigma 50). The test fails when
# one of these starts passing, so that this list stays true.
KNOWN_GAPS = {
    # The gaps left after 180 min of training on the bundled photographs only, as issue 14 sets it (models/README.md
    # and README.md give each in dB).
    "photo": {
        "gray sigma 15: blind PSNR >= NL-means (true sigma) + 0.5 dB",
        "gray sigma 15: blind PSNR >= BM3D (true sigma)",
        "colour sigma 15: blind PSNR >= NL-means (true sigma) + 0.5 dB",
        "colour sigma 15: blind PSNR >= BM3D (true sigma)",
        "gray sigma 25: blind PSNR >= BM3D (true sigma)",
        "colour sigma 25: blind PSNR >= BM3D (true sigma)",
    },
    # The seed documents' designs as written (issue 18) measured against our gates: that they fall short is the
    # finding (models/README.md sets each beside ours), not a defect to train away.
    "noise-cancel-seed": {"PSNR at sigma 0.5 >= 3x3 median + 5 dB"},
    "lstm-seed": {"test MSE below per-step PCA-3"},
}


@pytest.mark.parametrize("name", NAMES)
def test_files_match_card(name):
    card = card_of(name)
    assert card["name"] == name and not card["training"]["quick"]
    failed = {g["name"] for g in card["metrics"]["gates"] if not g["passed"]}
    assert failed == KNOWN_GAPS.get(name, set()), card["metrics"]["gates"]
    for graph in card["graphs"].values():
        path = MODELS_DIR / name / graph["file"]
        assert sha256_file(path) == graph["sha256"], f"{path} does not match its card"
        assert graph["parity"]["max_abs"] <= PARITY_TOL
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            assert [t.name for t in actual] == [t["name"] for t in graph[kind]]
            for t, spec in zip(actual, graph[kind], strict=True):
                assert t.type == "tensor(float)" and spec["dtype"] == "float32"
                assert [d if isinstance(d, int) else "sym" for d in t.shape] == [
                    d if isinstance(d, int) else "sym" for d in spec["shape"]
                ]
    # Nothing in a model folder but the card, the graphs and the declared artefacts (no pickles).
    expected = {"card.json", *(g["file"] for g in card["graphs"].values()), *card["artifacts"]}
    assert {p.name for p in (MODELS_DIR / name).iterdir()} == expected


# Seed 000's designs train on each image standardised over its own pixels: their decoder returns standardised
# values, which `full` maps back with the input's own mean and std.
STANDARDIZED_SEEDS = ("dense-seed", "conv-dense-latent-seed")


@pytest.mark.parametrize(
    "name", ["dense", "dense-shallow", "conv", "conv-dense-latent", "dense-seed", "conv-dense-latent-seed", "conv-seed"]
)
def test_mnist_reconstruction_metrics_hold(name, mnist):
    card = card_of(name)
    m = card["metrics"]
    x = mnist.test.x.reshape(len(mnist.test), 784) if card["input"]["layout"] == "vector" else mnist.test.x[:, None]
    recon = run_batched(session(name, "full"), x)
    test_mse = mse(recon, x)
    assert test_mse == pytest.approx(m["test_mse_per_pixel"], rel=1e-4)
    (pca_key, pca_mse), *_ = m["baselines"].items()
    k = int(pca_key.split("_")[1])
    assert mse(PCA(k).fit(mnist.train.x).reconstruct(mnist.test.x), mnist.test.x) == pytest.approx(pca_mse, rel=1e-4)
    # Scores from the full graph are the per-sample MSE of its reconstruction.
    scores = run_batched(session(name, "full"), x, output=1)
    assert np.allclose(scores, ((recon - x) ** 2).reshape(len(x), -1).mean(1), atol=1e-6)
    # encoder -> decoder equals the full graph.
    z = run_batched(session(name, "encoder"), x)
    decoded = run_batched(session(name, "decoder"), z)
    if name in STANDARDIZED_SEEDS:
        flat = x.reshape(len(x), -1)
        mean, std = flat.mean(1), flat.std(1)
        decoded = decoded * std.reshape(-1, *[1] * (x.ndim - 1)) + mean.reshape(-1, *[1] * (x.ndim - 1))
        assert card["metrics"]["train_images"] == 3000  # "mnist.data[:3000]"
    assert np.allclose(decoded, recon, atol=1e-4)
    if name == "dense":
        assert test_mse <= 0.7 * pca_mse


@pytest.mark.parametrize("name", ["denoise", "noise-cancel-seed"])
def test_denoise_metrics_hold(name, mnist):
    m = card_of(name)["metrics"]
    sess = session(name, "full")
    for i, (sigma, expected) in enumerate(m["psnr_by_sigma"].items()):
        noisy = add_noise(mnist.test.x, float(sigma), seed=3000 + i)  # the seeds training reports with
        got = psnr(mnist.test.x, run_batched(sess, noisy[:, None])[:, 0])
        assert got == pytest.approx(expected["model_psnr_db"], abs=1e-3)
        if float(sigma) == 0.5 and name == "denoise":
            assert got >= psnr(mnist.test.x, median3x3(noisy)) + 5.0
            assert got > expected["gaussian_blur_psnr_db"]


@pytest.mark.parametrize("name", ["denoise", "noise-cancel-seed"])
def test_denoise_keeps_any_size(name):
    sess = session(name, "full")
    for h, w in ((28, 28), (30, 45), (5, 7), (101, 64)):
        out = sess.run(None, {"x": np.random.default_rng(h).random((2, 1, h, w), dtype=np.float32)})[0]
        assert out.shape == (2, 1, h, w)


@pytest.mark.parametrize("name", ["lstm", "lstm-seed"])
def test_lstm_metrics_hold(name, motions):
    _, test, _ = motions
    card = card_of(name)
    scores = run_batched(session(name, "full"), test.x, output=1)
    # All test series have the same length, so the mean of per-series scores is the test MSE.
    assert float(scores.mean()) == pytest.approx(card["metrics"]["test_mse_standardized"], rel=1e-4)
    if name == "lstm":
        pca = card["metrics"]["baselines"]["per_step_pca_3_mse_standardized"]
        assert card["metrics"]["test_mse_standardized"] < pca
    z = run_batched(session(name, "encoder"), test.x)
    assert z.shape == (40, 100, 3)  # a real bottleneck: 3 numbers per step for 6 channels


def test_lstm_anomaly_auc_holds(motions):
    _, test, _ = motions
    card = card_of("lstm-anomaly")
    seq = card["input"]["sequence"]
    sess = session("lstm-anomaly", "full")
    starts = window_starts(test.x.shape[1], seq["window"], seq["stride"])
    per_window = np.stack([run_batched(sess, test.x[:, s : s + seq["window"]], output=1) for s in starts], axis=1)
    scores = per_window.max(axis=1)
    is_anomaly = test.y != card["anomaly"]["normal_class"]
    assert roc_auc(scores, is_anomaly) == pytest.approx(card["metrics"]["roc_auc"], abs=1e-6)


@pytest.mark.parametrize("name", ["lstm-forecast", "lstm-forecast-seed"])
def test_lstm_forecast_beats_persistence(name, motions):
    _, test, _ = motions
    card = card_of(name)
    x, y = make_pairs(test.x, card["forecast"]["window"], card["forecast"]["horizon"])
    pred = run_batched(session(name, "full"), x)
    assert mse(pred, y) == pytest.approx(card["metrics"]["test_mse_raw_units"], rel=1e-4)
    if name == "lstm-forecast":
        assert card["metrics"]["test_mse_standardized"] < card["metrics"]["baselines"]["persistence_mse_standardized"]
