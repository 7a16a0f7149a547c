"""`python -m training fit`: real tables nobody here made (scikit-learn's wine and breast-cancer data), images
(scikit-learn's 8x8 digits as PNG files) and series (sktime's bundled .ts files) -> export -> card -> publish ->
the real service serves them, equal to ONNX Runtime on the exported files; every bad input is refused with its
reason and writes nothing."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training.__main__ import main
from training.fit import tables
from training.fit.cli import build_parser
from training.pipeline import CARD_FILE

# Quick settings: the whole file has to run in a few minutes on 2 busy cores.
QUICK = ["--epochs", "80", "--patience", "15", "--progress", "lines"]


def write_csv(path: Path, header: list[str] | None, rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data.astype(np.float64), bunch.target, [n.replace("/", "_") for n in bunch.feature_names]


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data.astype(np.float64)


@pytest.fixture
def wine_csv(tmp_path, wine):
    x, y, names = wine
    rows = [[*(f"{v:g}" for v in row), int(label)] for row, label in zip(x, y, strict=True)]
    return write_csv(tmp_path / "wine.csv", [*names, "target"], rows)


def session(folder: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def serve(models: Path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    # No gRPC listener (where the service has one): a fixed port may be taken on a shared machine.
    grpc_off = {"grpc_port": 0} if "grpc_port" in Settings.model_fields else {}
    return TestClient(create_app(Settings(models_dir=models, log_level="warning", **grpc_off)))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# -- vectors: the happy paths ------------------------------------------------------------------------------------


def assert_refused(capsys, out: Path, args: list[str], *expected: str) -> None:
    """`fit` with `args` exits with 2, says every `expected` text on stderr and writes nothing under `out`."""
    assert main(["fit", *args, "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert not out.exists()


def test_wine_csv_fits_publishes_and_serves_in_raw_units(tmp_path, wine, wine_csv, capsys):
    x, _, names = wine
    models = tmp_path / "models"
    args = ["fit", "--data", str(wine_csv), "--name", "wine", "--ignore-columns", "target", "--publish", str(models)]
    assert main([*args, *QUICK]) == 0
    out, err = capsys.readouterr()
    assert "epoch 1/80" in err  # one line per epoch when stderr is not a terminal
    assert "PCA-3" in out and ("beats PCA-3" in out or "does NOT beat PCA-3" in out)
    folder = models / "wine" / "1"
    assert str(folder) in out
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["name"] == "wine" and card["version"] == "1" and card["kind"] == "fit-dense"
    assert card["tasks"] == ["encode", "decode", "reconstruct", "score"]
    assert card["input"]["columns"] == names and card["input"]["range"] is None and "image" not in card["input"]
    # Raw units: the card restricts no value (not [0, 1], not the training min-max).
    for graph in card["graphs"].values():
        assert all(t["range"] is None for t in [*graph["inputs"], *graph["outputs"]])
    # The standardisation is the training rows' (a 70/15/15 split of 178: 124 training rows).
    assert card["data"]["split"].startswith("124 train / 27 validation / 27 test")
    std = np.array(list(card["preprocessing"]["column_std"].values()))
    mean = np.array(list(card["preprocessing"]["column_mean"].values()))
    assert np.all(np.abs(mean - x.mean(0)) < 0.25 * x.std(0)) and np.all(std > 0)
    # PCA measured on the same test rows, in both units; the anomaly threshold where `score` reads it.
    metrics = card["metrics"]
    for part in ("autoencoder", "pca"):
        assert metrics[part]["test_mse_standardized"] > 0 and metrics[part]["test_mse_raw_units"] > 0
    assert metrics["baselines"] == {"pca_3_mse_standardized": metrics["pca"]["test_mse_standardized"]}
    anomaly = card["anomaly"]
    assert list(anomaly["validation_quantiles"]) == ["0.5", "0.9", "0.95", "0.99", "0.999"]
    assert anomaly["threshold"] == anomaly["validation_quantiles"]["0.99"] and anomaly["quantile"] == 0.99
    assert "fit --data" in card["provenance"]["command"]

    rows = x[:5].astype(np.float32)
    far = (x[:2] * 10).astype(np.float32)  # far outside anything seen in training: still served
    z = session(folder, "encoder").run(None, {"x": rows})[0]
    recon, scores = session(folder, "full").run(None, {"x": rows})
    decoded = session(folder, "decoder").run(None, {"z": z})[0]
    assert z.shape == (5, 3)
    # Reconstructions are in raw units: within a fraction of each column's spread of the input, not standardised.
    assert np.all(np.abs(recon - rows).mean(0) < x.std(0)) and recon[:, names.index("proline")].min() > 100
    with serve(models) as client:
        encoded = client.post("/v1/models/wine/encode", json={"inputs": rows.tolist()})
        assert encoded.status_code == 200, encoded.text
        np.testing.assert_allclose(encoded.json()["latent"], z, rtol=1e-5, atol=1e-5)
        answer = client.post("/v1/models/wine/reconstruct", json={"inputs": rows.tolist()}).json()
        np.testing.assert_allclose(answer["reconstruction"], recon, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5, atol=1e-6)
        back = client.post("/v1/models/wine/decode", json={"inputs": z.tolist()}).json()
        np.testing.assert_allclose(back["reconstruction"], decoded, rtol=1e-5, atol=1e-3)
        scored = client.post("/v1/models/wine/score", json={"inputs": rows.tolist()}).json()
        np.testing.assert_allclose(scored["scores"], scores, rtol=1e-5, atol=1e-6)
        assert scored["threshold"] == anomaly["threshold"]
        assert scored["anomalous"] == [bool(s > anomaly["threshold"]) for s in scores]
        # The request may pick another quantile of the validation scores, or give its own threshold.
        grid = anomaly["validation_score_quantiles"]
        assert len(grid) == 1001 and grid == sorted(grid) and grid[990] == pytest.approx(anomaly["threshold"], 1e-6)
        lax = client.post("/v1/models/wine/score?quantile=0.5", json={"inputs": rows.tolist()}).json()
        assert lax["threshold"] == anomaly["validation_quantiles"]["0.5"] and lax["threshold_source"] == "quantile"
        assert lax["anomalous"] == [bool(s > lax["threshold"]) for s in scores]
        mine = client.post("/v1/models/wine/score?threshold=0", json={"inputs": rows.tolist()}).json()
        assert mine["threshold"] == 0 and all(mine["anomalous"]) and mine["threshold_rule"] == "given by the request"
        outside = client.post("/v1/models/wine/score", json={"inputs": far.tolist()})
        assert outside.status_code == 200 and all(outside.json()["anomalous"])
        # A table's rows have no image form: an image upload is refused with the reason.
        upload = client.post(
            "/v1/models/wine/score", files={"file": ("a.png", png_bytes(np.zeros((8, 8), np.uint8)), "image/png")}
        )
        assert upload.status_code == 415 and "takes vectors, not images" in upload.json()["error"]["message"]
    # A second publish is version 2, beside version 1.
    assert main([*args, *QUICK, "--seed", "1"]) == 0
    assert json.loads((models / "wine" / "2" / CARD_FILE).read_text())["version"] == "2"
    assert sorted(p.name for p in (models / "wine").iterdir()) == ["1", "2"]


def test_breast_cancer_npy_memory_mapped_fit_beside_pca(tmp_path, cancer, capsys):
    data = tmp_path / "cancer.npy"
    np.save(data, cancer)
    out = tmp_path / "runs"
    assert main(["fit", "--data", str(data), "--name", "cancer", "--out", str(out), "--latent", "4", *QUICK]) == 0
    summary = capsys.readouterr().out
    card = json.loads((out / "cancer" / CARD_FILE).read_text())
    assert card["data"]["format"] == "npy" and card["input"]["columns"] == [str(i) for i in range(30)]
    m = card["metrics"]
    ae, pca = m["autoencoder"]["test_mse_standardized"], m["pca"]["test_mse_standardized"]
    assert m["autoencoder_beats_pca"]["test"] == (ae < pca)
    assert ("does NOT beat PCA-4" in summary) == (ae >= pca)
    assert 0 < pca < 1 and 0 < ae < 1.5  # 4 of 30 standardised columns explain most of the variance
    # The exported graph reproduces the card's test number on the same rows.
    print(f"breast cancer, K=4: autoencoder {ae:.4f} vs PCA {pca:.4f} (standardised test MSE)")
    recon = session(out / "cancer", "full").run(None, {"x": cancer[:50].astype(np.float32)})[0]
    assert recon.shape == (50, 30)
    assert np.abs(recon - cancer[:50]).mean() < np.abs(cancer[:50] - cancer.mean(0)).mean()


def test_pca_if_better_exports_pca_as_a_linear_autoencoder(tmp_path, wine, wine_csv, capsys):
    x, _, _ = wine
    out = tmp_path / "runs"
    # One epoch: the network is far from PCA on the validation rows, so PCA is exported.
    args = ["fit", "--data", str(wine_csv), "--name", "wine-pca", "--ignore-columns", "target", "--out", str(out)]
    assert main([*args, "--pca-if-better", "--epochs", "1", "--progress", "none"]) == 0
    summary = capsys.readouterr().out
    assert "does NOT beat PCA-3" in summary and "exported: PCA-3" in summary
    card = json.loads((out / "wine-pca" / CARD_FILE).read_text())
    assert card["kind"] == "fit-pca" and card["metrics"]["exported"] == "pca"
    assert card["metrics"]["test_mse_standardized"] == card["metrics"]["pca"]["test_mse_standardized"]
    # The exported graph is PCA: reconstructions are projections (idempotent) and match a numpy PCA of the
    # standardised training rows.
    mean = np.array(list(card["preprocessing"]["column_mean"].values()))
    std = np.array(list(card["preprocessing"]["column_std"].values()))
    full = session(out / "wine-pca", "full")
    rows = x.astype(np.float32)
    once = full.run(None, {"x": rows})[0]
    twice = full.run(None, {"x": once})[0]
    np.testing.assert_allclose(twice, once, rtol=1e-3, atol=1e-2)
    train_idx = np.sort(np.random.default_rng(0).permutation(len(x))[:124])
    s = (x[train_idx] - mean) / std
    _, _, vt = np.linalg.svd(s - s.mean(0), full_matrices=False)
    v = vt[:3]
    expected = (((x - mean) / std - s.mean(0)) @ v.T @ v + s.mean(0)) * std + mean
    np.testing.assert_allclose(once, expected, rtol=1e-3, atol=1e-2 * x.std(0).max())


def test_impute_and_drop_constant_when_asked(tmp_path, wine, capsys):
    x, _, names = wine
    rows = [[f"{v:g}" for v in r] + ["7"] for r in x]
    rows[3][0] = ""
    rows[10][4] = "NA"
    data = write_csv(tmp_path / "gaps.csv", [*names, "const"], rows)
    out = tmp_path / "runs"
    args = ["fit", "--data", str(data), "--name", "gaps", "--out", str(out), "--epochs", "5", "--progress", "none"]
    assert main([*args, "--impute", "median", "--drop-constant"]) == 0
    err = capsys.readouterr().err
    assert "warning: dropping 1 constant column(s): 'const' (7)" in err
    card = json.loads((out / "gaps" / CARD_FILE).read_text())
    assert card["input"]["columns"] == names and card["preprocessing"]["dropped_constant_columns"] == {"const": 7.0}
    imputed = card["preprocessing"]["imputed"]
    assert imputed["rule"] == "median" and set(imputed["columns"]) == {names[0], names[4]}
    train_idx = np.sort(np.random.default_rng(0).permutation(len(x))[:124])
    train_col = np.delete(x[train_idx, 0], np.flatnonzero(train_idx == 3))
    assert imputed["columns"][names[0]]["value"] == pytest.approx(np.median(train_col), rel=1e-6)


# -- vectors: bad data is refused, nothing is written --------------------------------------------------------------
def _bad_csv(tmp_path: Path, wine, edit) -> Path:
    x, _, names = wine
    rows = [[f"{v:g}" for v in r] for r in x]
    header = list(names)
    header, rows = edit(header, rows)
    return write_csv(tmp_path / "bad.csv", header, rows)


def _set(row: int, col: int, value: str):
    def edit(header, rows):
        rows[row][col] = value
        return header, rows

    return edit


def _constant(header, rows):
    for r in rows:
        r[2] = "2.5"
    return header, rows


@pytest.mark.parametrize(
    ("edit", "extra", "expected"),
    [
        (_set(5, 1, "abc"), [], ["bad.csv: line 7, column 'malic_acid' (1): 'abc' is not a number", "--columns"]),
        (_set(8, 3, ""), [], ["1 missing value(s)", "line 10, column 'alcalinity_of_ash' (3)", "--impute mean|median"]),
        (_set(9, 0, "nan"), [], ["missing value(s)", "line 11, column 'alcohol' (0)"]),
        (_set(2, 12, "inf"), [], ["line 4, column 'proline' (12): inf is not a finite number"]),
        (_set(2, 12, "1e39"), [], ["line 4, column 'proline' (12): inf is not a finite number"]),
        (_constant, [], ["1 constant column(s)", "'ash' (2.5)", "--drop-constant"]),
        (lambda h, r: (h, r[:20]), [], ["20 rows; at least 31 are needed", "70/15/15"]),
        (lambda h, r: (h, r), ["--columns", "alcohol,nope"], ["--columns 'nope': no such column"]),
        (lambda h, r: (h, r), ["--columns", "3,99"], ["--columns 99: the file has columns 0..12"]),
        (lambda h, r: (h, r), ["--latent", "13"], ["--latent 13: the code must be smaller than the 13 columns"]),
        (lambda h, r: (h, r), ["--columns", "alcohol"], ["one column left ('alcohol')"]),
        (lambda h, r: (h, [*r[:5], r[5][:4], *r[6:]]), [], ["line 7 has 4 cells, the header has 13"]),
        (_set(0, 0, "x"), ["--header", "no"], ["line 1, column '0' (0): 'alcohol' is not a number"]),
    ],
    ids=[
        "text-cell", "empty-cell", "nan-cell", "inf", "beyond-float32", "constant-column", "too-few-rows",
        "unknown-column", "column-index", "latent-too-wide", "one-column", "ragged-row", "header-read-as-data",
    ],
)  # fmt: skip
def test_bad_csv_is_refused_and_nothing_is_written(tmp_path, wine, capsys, edit, extra, expected):
    data = _bad_csv(tmp_path, wine, edit)
    out, models = tmp_path / "runs", tmp_path / "models"
    (models / "bad").mkdir(parents=True)
    before = tree(models)
    for where in (["--out", str(out)], ["--publish", str(models)]):
        assert main(["fit", "--data", str(data), "--name", "bad", *where, *extra, *QUICK]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("error: ")
        for text in expected:
            assert text in err, err
    assert not out.exists() and tree(models) == before


def test_bad_arrays_and_options_are_refused(tmp_path, cancer, capsys):
    out = tmp_path / "runs"

    def refused(args: list[str], *expected: str) -> None:
        assert_refused(capsys, out, args, *expected)

    with_inf = cancer.copy()
    with_inf[7, 3] = np.inf
    np.save(tmp_path / "inf.npy", with_inf)
    refused(["--data", str(tmp_path / "inf.npy"), "--name", "a"], "row 7, column '3' (3): inf is not a finite number")
    with_nan = cancer.copy()
    with_nan[[4, 9], 2] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    refused(["--data", str(tmp_path / "nan.npy"), "--name", "a"], "2 missing value(s)", "row 4, column '2' (2)")
    np.save(tmp_path / "flat.npy", cancer[:, 0])
    refused(["--data", str(tmp_path / "flat.npy"), "--name", "a"], "has shape [569]", "2-D array")
    big = cancer.copy()
    big[1, 1] = 1e300
    np.save(tmp_path / "big.npy", big)
    refused(["--data", str(tmp_path / "big.npy"), "--name", "a"], "row 1, column 1: 1e+300 does not fit in float32")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]] * 50))
    refused(["--data", str(tmp_path / "text.npy"), "--name", "a"], "<U1 values; vectors must be numbers")
    np.savez(tmp_path / "two.npz", x=cancer, y=cancer[:, :3])
    refused(["--data", str(tmp_path / "two.npz"), "--name", "a"], "holds 2 arrays (x, y); choose one with --array")
    refused(["--data", str(tmp_path / "two.npz"), "--name", "a", "--array", "z"], "no array 'z' (arrays: x, y)")
    (tmp_path / "empty.csv").write_text("")
    refused(["--data", str(tmp_path / "empty.csv"), "--name", "a"], "no rows (an empty file)")
    (tmp_path / "head.csv").write_text("a,b,c\n")
    refused(["--data", str(tmp_path / "head.csv"), "--name", "a"], "a header and no rows")
    (tmp_path / "notes.txt").write_text("1,2\n")
    refused(["--data", str(tmp_path / "notes.txt"), "--name", "a"], "cannot tell what it holds")
    refused(["--data", str(tmp_path / "nope.csv"), "--name", "a"], "--data", "no such file or directory")
    refused(["--data", str(tmp_path / "inf.npy"), "--name", "Bad Name"], "--name 'Bad Name'")
    refused(["--data", str(tmp_path / "inf.npy"), "--name", "a", "--quantile", "1"], "--quantile 1.0")
    # An existing model folder is never replaced without --replace.
    np.save(tmp_path / "ok.npy", cancer)
    (out / "a").mkdir(parents=True)
    (out / "a" / "keep.txt").write_text("mine")
    assert main(["fit", "--data", str(tmp_path / "ok.npy"), "--name", "a", "--out", str(out)]) == 2
    assert "exists: pass --replace" in capsys.readouterr().err
    assert tree(out) == ["a", "a/keep.txt"]


def test_text_is_read_in_blocks_with_exact_line_numbers(tmp_path, monkeypatch, wine):
    x, _, names = wine
    monkeypatch.setattr(tables, "BLOCK_ROWS", 16)
    rows = [[f"{v:g}" for v in r] for r in x]
    lines = [",".join(names)] + [",".join(r) for r in rows[:40]] + [""] + [",".join(r) for r in rows[40:]]
    (tmp_path / "w.tsv.gz").write_bytes(__import__("gzip").compress("\n".join(lines).replace(",", "\t").encode()))
    table = tables.read_table(tmp_path / "w.tsv.gz", columns=["proline", "0"])
    assert table.columns == ["proline", "alcohol"] and table.values.shape == (178, 2)
    np.testing.assert_allclose(table.values, x[:, [12, 0]].astype(np.float32))
    assert table.lines[0] == 2 and table.lines[39] == 41 and table.lines[40] == 43  # the blank line is skipped
    rows[100][5] = "oops"
    write_csv(tmp_path / "w.csv", names, rows)
    with pytest.raises(ValueError, match=r"line 102, column 'total_phenols' \(5\): 'oops'"):
        tables.read_table(tmp_path / "w.csv")


# -- the command line ---------------------------------------------------------------------------------------------
def test_help_explains_every_option_with_examples(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, action.option_strings
    assert "examples:" in text and "--publish models" in text and "torchrun" in text
    # `python -m training MODEL` is unchanged: an unknown model is still its error.
    assert main(["fitt"]) == 2
    assert "unknown model 'fitt'" in capsys.readouterr().err


# -- images -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """scikit-learn's 1,797 real 8x8 digits (0..16) as 8-bit PNG files, one sub-folder per digit."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    bunch = load_digits()
    pixels = np.round(bunch.images * 255 / 16).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image, "L").save(folder / str(label) / f"{i:04d}.png")
    return folder, pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def test_digit_pngs_fit_dense_publish_and_serve_uploads(tmp_path, digits_folder, capsys):
    folder, pixels = digits_folder
    models = tmp_path / "models"
    args = ["fit", "--data", str(folder), "--name", "digits", "--publish", str(models), "--epochs", "25"]
    assert main([*args, "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "1797 images -> 1x8x8" in out and "PCA-8" in out
    card = json.loads((models / "digits" / "1" / CARD_FILE).read_text())
    assert card["kind"] == "fit-dense-images" and card["input"]["image"] == {"height": 8, "width": 8, "channels": 1}
    assert card["data"]["native_sizes"] == {"8x8": 1797}
    m = card["metrics"]
    print(f"digits 8x8, K=8, dense: {m['test_mse_per_pixel']:.4f} vs PCA {m['pca']['test_mse_per_pixel']:.4f}")
    assert m["test_mse_per_pixel"] < 0.05 and m["pca"]["test_mse_per_pixel"] < 0.05
    x = (pixels[:6] / 255.0).astype(np.float32)[:, None]
    folder_v1 = models / "digits" / "1"
    z = session(folder_v1, "encoder").run(None, {"x": x})[0]
    recon, scores = session(folder_v1, "full").run(None, {"x": x})
    with serve(models) as client:
        encoded = client.post("/v1/models/digits/encode", json={"inputs": x.tolist()}).json()
        np.testing.assert_allclose(encoded["latent"], z, rtol=1e-5, atol=1e-5)
        scored = client.post("/v1/models/digits/score", json={"inputs": x[:, 0].tolist()}).json()  # [N, 8, 8]
        np.testing.assert_allclose(scored["scores"], scores, rtol=1e-5, atol=1e-6)
        # A PNG upload is decoded as in training: the same reconstruction as ONNX Runtime on its pixels.
        upload = client.post(
            "/v1/models/digits/reconstruct", files={"file": ("d.png", png_bytes(pixels[0]), "image/png")}
        )
        assert upload.status_code == 200, upload.text
        np.testing.assert_allclose(upload.json()["reconstruction"], recon[:1], rtol=1e-5, atol=1e-5)


def test_idx_images_fit_conv(tmp_path, digits_folder):
    import gzip
    import struct

    _, pixels = digits_folder
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, 1000, 8, 8) + pixels[:1000].tobytes())
    with open(idx / "t10k-images-idx3-ubyte", "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, 797, 8, 8) + pixels[1000:].tobytes())
    out = tmp_path / "runs"
    args = ["fit", "--data", str(idx), "--name", "digits-conv", "--arch", "conv", "--out", str(out)]
    assert main([*args, "--latent", "6", "--epochs", "4", "--progress", "none"]) == 0
    card = json.loads((out / "digits-conv" / CARD_FILE).read_text())
    assert card["kind"] == "fit-conv-images" and card["data"]["format"] == "idx" and card["data"]["images"] == 1797
    assert card["latent"]["numbers"] == 6
    x = (pixels[:3] / 255.0).astype(np.float32)[:, None]
    recon = session(out / "digits-conv", "full").run(None, {"x": x})[0]
    assert recon.shape == (3, 1, 8, 8) and recon.min() >= 0 and recon.max() <= 1


def test_colour_photo_tiles_of_any_size_fit_conv(tmp_path):
    """Tiles of scikit-learn's two bundled photographs, of two sizes, in colour: resized to the working size."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path / "tiles"
    folder.mkdir()
    for n, photo in enumerate(load_sample_images().images):
        for i, (top, left) in enumerate((t, c) for t in range(0, 400, 50) for c in range(0, 600, 100)):
            h, w = (40, 40) if i % 2 else (30, 50)
            Image.fromarray(photo[top : top + h, left : left + w]).save(folder / f"{n}-{i}.jpg", quality=95)
    out = tmp_path / "runs"
    args = ["fit", "--data", str(folder), "--name", "tiles", "--channels", "3", "--arch", "conv", "--out", str(out)]
    assert main([*args, "--epochs", "2", "--progress", "none"]) == 0
    card = json.loads((out / "tiles" / CARD_FILE).read_text())
    assert card["input"]["image"] == {"height": 28, "width": 28, "channels": 3}  # mixed sizes: the default side
    assert card["data"]["native_sizes"] == {"40x40": 48, "50x30": 48}
    x = np.random.default_rng(0).random((2, 3, 28, 28), dtype=np.float32)
    recon, score = session(out / "tiles", "full").run(None, {"x": x})
    assert recon.shape == (2, 3, 28, 28) and score.shape == (2,)


def test_bad_images_are_refused_and_nothing_is_written(tmp_path, digits_folder, capsys):
    folder, _ = digits_folder
    out = tmp_path / "runs"

    def refused(args: list[str], *expected: str) -> None:
        assert_refused(capsys, out, [*args, "--name", "img"], *expected)

    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    for i in range(40):
        (broken / "a" / f"{i}.png").write_bytes(png_bytes(np.full((8, 8), i, np.uint8)))
    (broken / "a" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    refused(["--data", str(broken)], "7.png: not a readable PNG/JPEG image")
    few = tmp_path / "few"
    few.mkdir()
    for i in range(12):
        (few / f"{i}.png").write_bytes(png_bytes(np.full((8, 8), i * 9, np.uint8)))
    refused(["--data", str(few)], "12 images; at least 31 are needed")
    refused(["--data", str(folder), "--arch", "conv", "--size", "10"], "--size 10", "multiple of 4")
    refused(["--data", str(folder), "--latent", "64"], "--latent 64: the code must be smaller than the 64")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("hi")
    refused(["--data", str(empty)], "a folder of neither")
    refused(["--data", str(empty), "--kind", "images"], "no IDX image files")


def _aligned(z: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`z` with each component's sign matched to `reference` (PCA components are defined up to sign)."""
    return z * np.where((z * reference).sum(axis=0) < 0, -1.0, 1.0)


def _pca(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Numpy's own PCA of the rows of `train`: the K components (rows) and the centre."""
    flat = train.reshape(len(train), -1).astype(np.float64)
    centre = flat.mean(axis=0)
    return np.linalg.svd(flat - centre, full_matrices=False)[2][:k], centre


def test_pca_if_better_exports_pca_for_images_and_serves_it(tmp_path, digits_folder, capsys):
    """One epoch: the network is far from PCA-8 on the validation digits, so PCA-8 is exported as a linear image
    autoencoder with the network's graphs; ONNX Runtime and the service reproduce numpy's PCA of the training digits
    (reconstructions clipped to the pixels' [0, 1])."""
    folder, pixels = digits_folder
    models = tmp_path / "models"
    args = ["fit", "--data", str(folder), "--name", "digits-pca", "--publish", str(models), "--pca-if-better"]
    assert main([*args, "--epochs", "1", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "does NOT beat PCA-8" in out and "exported: PCA-8 (--pca-if-better" in out
    folder_v1 = models / "digits-pca" / "1"
    card = json.loads((folder_v1 / CARD_FILE).read_text())
    m = card["metrics"]
    assert card["kind"] == "fit-pca-images" and m["exported"] == "pca" and m["exported_rule"].startswith("--pca-if")
    assert m["test_mse_per_pixel"] == m["pca"]["test_mse_per_pixel"] < m["autoencoder"]["test_mse_per_pixel"]
    assert card["input"]["image"] == {"height": 8, "width": 8, "channels": 1} and card["latent"]["numbers"] == 8
    # The fit reads the files in path order (one folder per digit); its split is the seeded permutation.
    order = [int(p.stem) for p in sorted(folder.rglob("*.png"))]
    x = (pixels[order] / 255.0).astype(np.float32)[:, None]
    train = x[np.sort(np.random.default_rng(0).permutation(len(x))[:1257])]
    v, centre = _pca(train, 8)
    sample = x[:20]
    z_ref = (sample.reshape(20, -1) - centre) @ v.T
    recon_ref = np.clip(z_ref @ v + centre, 0.0, 1.0).reshape(sample.shape)
    z = session(folder_v1, "encoder").run(None, {"x": sample})[0]
    recon, scores = session(folder_v1, "full").run(None, {"x": sample})
    decoded = session(folder_v1, "decoder").run(None, {"z": z})[0]
    np.testing.assert_allclose(_aligned(z, z_ref), z_ref, atol=1e-4)
    np.testing.assert_allclose(recon, recon_ref, atol=1e-4)
    np.testing.assert_allclose(decoded, recon_ref, atol=1e-4)
    np.testing.assert_allclose(scores, ((recon_ref - sample) ** 2).mean(axis=(1, 2, 3)), atol=1e-6)
    with serve(models) as client:
        encoded = client.post("/v1/models/digits-pca/encode", json={"inputs": sample.tolist()})
        assert encoded.status_code == 200, encoded.text
        np.testing.assert_allclose(encoded.json()["latent"], z, rtol=1e-5, atol=1e-5)
        answer = client.post("/v1/models/digits-pca/reconstruct", json={"inputs": sample.tolist()}).json()
        np.testing.assert_allclose(answer["reconstruction"], recon, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5, atol=1e-7)


# -- series -----------------------------------------------------------------------------------------------------------
def sktime_file(relative: str) -> Path:
    from training.data.timeseries import sktime_data_path

    return sktime_data_path(relative)


def test_ts_series_autoencoder_scores_longer_series_in_windows(tmp_path, capsys):
    """ItalyPowerDemand (sktime's bundled .ts): 67 days of Italian power demand, 24 hourly steps each."""
    from training.fit.series import read_ts

    data = sktime_file("ItalyPowerDemand/ItalyPowerDemand_TRAIN.ts")
    models = tmp_path / "models"
    args = ["fit", "--data", str(data), "--name", "power", "--publish", str(models), "--epochs", "40"]
    assert main([*args, "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "67 series" in out and "47 / 10 / 10 series" in out and "PCA-3 of the flattened windows" in out
    folder = models / "power" / "1"
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["kind"] == "fit-lstm" and card["input"]["layout"] == "sequence"
    assert card["input"]["sequence"] == {
        "channels": 1, "channel_names": ["dim_0"], "window": 24, "stride": 12, "min_length": 24, "step_seconds": None,
    }  # fmt: skip
    assert card["latent"]["numbers"] == 3 and card["anomaly"]["threshold"] > 0
    m = card["metrics"]
    print(
        f"ItalyPowerDemand, K=3: LSTM {m['test_mse_standardized']:.4f} vs PCA {m['pca']['test_mse_standardized']:.4f}"
    )
    series = np.stack(read_ts(data).series[:4])  # [4, 24, 1]
    longer = np.concatenate([series[:2], series[2:]], axis=1)  # two days in a row: [2, 48, 1]
    z = session(folder, "encoder").run(None, {"x": series})[0]
    full = session(folder, "full")
    windows = np.concatenate([longer[:, s : s + 24] for s in (0, 12, 24)])  # the service's window starts
    per_window = full.run(None, {"x": windows})[1].reshape(3, 2)
    with serve(models) as client:
        encoded = client.post("/v1/models/power/encode", json={"inputs": series.tolist()})
        assert encoded.status_code == 200, encoded.text
        np.testing.assert_allclose(encoded.json()["latent"], z, rtol=1e-5, atol=1e-5)
        scored = client.post("/v1/models/power/score", json={"inputs": longer.tolist()}).json()
        np.testing.assert_allclose(scored["scores"], per_window.max(axis=0), rtol=1e-4, atol=1e-6)
        assert [w["start"] for w in scored["windows"][0]] == [0, 12, 24]
        assert scored["threshold"] == card["anomaly"]["threshold"]
        short = client.post("/v1/models/power/score", json={"inputs": series[:, :10].tolist()})
        assert short.status_code == 422 and "at least 24" in short.text


def test_long_table_and_csv_folder_series_of_unequal_lengths(tmp_path):
    """JapaneseVowels (sktime): 270 utterances of 7-26 steps x 12 channels, as a long table and one CSV each."""
    from training.fit.series import read_ts

    vowels = read_ts(sktime_file("JapaneseVowels/JapaneseVowels_TRAIN.ts")).series
    header = ["utterance", *(f"c{i}" for i in range(12))]
    rows = [[f"u{n}", *(f"{v:.6g}" for v in step)] for n, x in enumerate(vowels) for step in x]
    table = write_csv(tmp_path / "vowels.csv", header, rows)
    out = tmp_path / "runs"
    quick = ["--epochs", "3", "--progress", "none", "--latent", "6"]
    assert (
        main(["fit", "--data", str(table), "--id-column", "utterance", "--name", "vowels", "--out", str(out), *quick])
        == 0
    )
    card = json.loads((out / "vowels" / CARD_FILE).read_text())
    assert card["data"]["series"] == 270 and card["data"]["channels"] == header[1:]
    shortest = min(len(x) for x in vowels)
    assert card["input"]["sequence"]["window"] == shortest == card["data"]["lengths"]["min"]
    recon, score = session(out / "vowels", "full").run(None, {"x": vowels[0][None]})
    assert recon.shape == (1, len(vowels[0]), 12) and score.shape == (1,)
    folder = tmp_path / "one-per-file"
    folder.mkdir()
    for n, x in enumerate(vowels[:40]):
        write_csv(folder / f"u{n:03d}.csv", header[1:], [[f"{v:.6g}" for v in step] for step in x])
    assert main(["fit", "--data", str(folder), "--name", "vowels-files", "--out", str(out), *quick]) == 0
    card = json.loads((out / "vowels-files" / CARD_FILE).read_text())
    assert card["data"]["format"] == "csv folder" and card["data"]["series"] == 40


def test_single_series_forecaster_serves_predict(tmp_path, capsys):
    """sktime's Airline passengers (144 months, one series): split in time, a forecaster of the next month."""
    data = sktime_file("Airline/Airline.csv")
    models = tmp_path / "models"
    args = ["fit", "--data", str(data), "--kind", "series", "--ignore-columns", "Date", "--name", "airline"]
    assert main([*args, "--forecast", "1", "--publish", str(models), "--epochs", "30", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "split in time" in out and "persistence" in out
    folder = models / "airline" / "1"
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["tasks"] == ["predict"] and card["forecast"] == {"horizon": 1, "window": 10, "step_seconds": None}
    assert "persistence_mse_standardized" in card["metrics"]["baselines"]
    passengers = np.loadtxt(data, delimiter=",", skiprows=1, usecols=1, dtype=np.float32)
    window = passengers[-10:][None, :, None]
    expected = session(folder, "full").run(None, {"x": window})[0]
    with serve(models) as client:
        answer = client.post("/v1/models/airline/predict", json={"inputs": window.tolist()})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["forecast"], expected, rtol=1e-5)
    assert 200 < float(expected[0, 0]) < 1000  # passengers (thousands), in raw units


def test_bad_series_are_refused_and_nothing_is_written(tmp_path, capsys):
    from training.fit.series import read_ts

    out = tmp_path / "runs"

    def refused(args: list[str], *expected: str) -> None:
        assert_refused(capsys, out, [*args, "--name", "s"], *expected)

    lines = sktime_file("ItalyPowerDemand/ItalyPowerDemand_TRAIN.ts").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("@data")) + 1
    missing = list(lines)
    missing[first + 4] = "?," + missing[first + 4].split(",", 1)[1]
    (tmp_path / "gap.ts").write_text("\n".join(missing))
    refused(["--data", str(tmp_path / "gap.ts")], f"gap.ts:{first + 5}: channel 0 has missing values ('?')")
    filled = read_ts(tmp_path / "gap.ts", impute=True)  # --impute linear: a first value takes the nearest one
    assert filled.series[4][0, 0] == filled.series[4][1, 0] and filled.imputed == {"dim_0": 1}
    ts = str(sktime_file("ItalyPowerDemand/ItalyPowerDemand_TRAIN.ts"))
    refused(["--data", ts, "--window", "30"], "have fewer than the 30 steps", "--window")
    refused(["--data", ts, "--impute", "mean"], "--impute mean: series are imputed along time only", "--impute linear")
    refused(["--data", ts, "--forecast", "1", "--pca-if-better"], "a forecaster (--forecast) is measured against")
    refused(["--data", ts, "--latent", "24"], "--latent 24: the code must be smaller than a window's 24 values")
    few = list(lines[:first]) + list(lines[first : first + 5])
    (tmp_path / "few.ts").write_text("\n".join(few))
    refused(["--data", str(tmp_path / "few.ts"), "--window", "10"], "5 series of 24-24 steps: too few to split by")
    flat = tmp_path / "flat.csv"
    write_csv(flat, ["id", "a", "b"], [[f"s{i // 20}", str(i), "3"] for i in range(800)])
    refused(["--data", str(flat), "--id-column", "id"], "channel(s) ['b'] are constant over the training steps")
    refused(["--data", str(flat), "--id-column", "nope"], "--id-column 'nope': no such column")


def test_pca_if_better_exports_pca_for_series_of_any_length(tmp_path, capsys):
    """ItalyPowerDemand, one epoch: PCA-3 of the flattened standardised 24-step windows is exported as a linear
    sequence autoencoder with the LSTM's graphs; on a window it is numpy's PCA, on a longer series every step is
    the average of the PCA reconstructions of the 24-step windows (stride 1) holding it."""
    from training.fit.series import read_ts

    data = sktime_file("ItalyPowerDemand/ItalyPowerDemand_TRAIN.ts")
    models = tmp_path / "models"
    args = ["fit", "--data", str(data), "--name", "power-pca", "--publish", str(models), "--pca-if-better"]
    assert main([*args, "--epochs", "1", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "exported: PCA-3 (--pca-if-better" in out
    folder = models / "power-pca" / "1"
    card = json.loads((folder / CARD_FILE).read_text())
    m = card["metrics"]
    assert card["kind"] == "fit-pca-series" and m["exported"] == "pca"
    assert m["test_mse_standardized"] == m["pca"]["test_mse_standardized"]
    assert m["pca"]["val_mse_standardized"] <= m["autoencoder"]["val_mse_standardized"]
    assert card["input"]["sequence"]["window"] == 24 and card["input"]["sequence"]["min_length"] == 24
    series = np.stack(read_ts(data).series)  # [67, 24, 1]; a window is a whole series here
    train = series[np.sort(np.random.default_rng(0).permutation(len(series))[:47])].astype(np.float64)
    mean, std = train.reshape(-1, 1).mean(axis=0), train.reshape(-1, 1).std(axis=0)
    v, centre = _pca((train - mean) / std, 3)

    def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes averaged over the 24-step windows, and each step's reconstruction averaged over its windows."""
        s = (x - mean) / std
        total, count, codes = np.zeros_like(s), np.zeros(x.shape[1]), []
        for start in range(x.shape[1] - 23):
            code = (s[:, start : start + 24].reshape(len(x), -1) - centre) @ v.T
            total[:, start : start + 24] += (code @ v + centre).reshape(len(x), 24, -1)
            count[start : start + 24] += 1
            codes.append(code)
        return np.mean(codes, axis=0), (total / count[None, :, None]) * std + mean

    sample = series[:6]
    longer = np.concatenate([series[:3], series[3:6]], axis=1)  # two days in a row: [3, 48, 1]
    full, encoder = session(folder, "full"), session(folder, "encoder")
    for x in (sample, longer):
        z_ref, recon_ref = reference(x)
        z = encoder.run(None, {"x": x})[0]
        recon, scores = full.run(None, {"x": x})
        np.testing.assert_allclose(_aligned(z, z_ref), z_ref, atol=1e-4)
        np.testing.assert_allclose(recon, recon_ref, atol=1e-4)
        np.testing.assert_allclose(scores, (((recon_ref - x) / std) ** 2).mean(axis=(1, 2)), atol=1e-5)
    z = encoder.run(None, {"x": sample})[0]
    np.testing.assert_allclose(session(folder, "decoder").run(None, {"z": z})[0], reference(sample)[1], atol=1e-4)
    with serve(models) as client:
        for x in (sample, longer):
            encoded = client.post("/v1/models/power-pca/encode", json={"inputs": x.tolist()})
            assert encoded.status_code == 200, encoded.text
            np.testing.assert_allclose(encoded.json()["latent"], encoder.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
            answer = client.post("/v1/models/power-pca/reconstruct", json={"inputs": x.tolist()}).json()
            np.testing.assert_allclose(answer["reconstruction"], full.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
        scored = client.post("/v1/models/power-pca/score", json={"inputs": longer.tolist()}).json()
        windows = np.concatenate([longer[:, s : s + 24] for s in (0, 12, 24)])
        per_window = full.run(None, {"x": windows})[1].reshape(3, 3)
        np.testing.assert_allclose(scored["scores"], per_window.max(axis=0), rtol=1e-4, atol=1e-6)


def _solar_rows() -> tuple[list[str], list[list[str]]]:
    """sktime's solar generation: 289 half-hourly steps with ISO 8601 timestamps (UTC offsets)."""
    with open(sktime_file("solar/solar.csv"), newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_time_column_orders_rows_records_the_step_and_impute_linear_fills_gaps(tmp_path, capsys):
    from training.fit.series import read_series

    header, rows = _solar_rows()
    values = np.array([float(r[1]) for r in rows], dtype=np.float32)
    gaps = [r[:] for r in rows]
    for i in (0, 150, 151, 240):  # the first step (an end: the nearest value) and three inside
        gaps[i][1] = ""
    shuffled = [gaps[i] for i in np.random.default_rng(0).permutation(len(gaps))]
    data = write_csv(tmp_path / "solar.csv", header, shuffled)
    read = {"id_column": None, "columns": None, "ignore_columns": None, "header": "auto", "delimiter": None}
    got = read_series(data, **read, time_column="datetime_gmt", impute=True)
    expected = values.copy()
    expected[0] = values[1]
    expected[150:152] = values[149] + (values[152] - values[149]) * np.array([1, 2]) / 3
    expected[240] = (values[239] + values[241]) / 2
    np.testing.assert_allclose(got.series[0][:, 0], expected, rtol=1e-6, atol=1e-6)
    assert got.channels == ["solar_gen"] and got.imputed == {"solar_gen": 4} and got.step_seconds == 1800
    assert got.time == {
        "column": "datetime_gmt", "holds": "timestamps", "step_seconds": 1800.0,
        "first": "2021-05-01T00:00:00+00:00", "last": "2021-05-07T00:00:00+00:00",
    }  # fmt: skip
    # Numbers are seconds (here Unix time): the same order and step.
    unix = [[f"{datetime.fromisoformat(r[0]).timestamp():.0f}", r[1]] for r in shuffled]
    numeric = read_series(write_csv(tmp_path / "unix.csv", ["t", "gen"], unix), **read, time_column="t", impute=True)
    np.testing.assert_allclose(numeric.series[0], got.series[0])
    assert numeric.step_seconds == 1800 and numeric.time["holds"] == "numbers"
    # A folder of CSV files, one series each: every file ordered by its own times, one step for all.
    folder = tmp_path / "days"
    folder.mkdir()
    write_csv(folder / "a.csv", header, gaps[:150][::-1])
    write_csv(folder / "b.csv", header, gaps[150:][::-1])
    files = read_series(folder, **read, time_column="datetime_gmt", impute=True)
    assert files.names == ["a.csv", "b.csv"] and files.step_seconds == 1800
    within = expected[150:].copy()
    within[:2] = values[152]  # b.csv starts with the two gaps: its first known value fills them
    np.testing.assert_allclose(files.series[1][:, 0], within, rtol=1e-6, atol=1e-6)
    # The whole command: a forecaster whose card says how far apart the steps are.
    models = tmp_path / "models"
    args = ["fit", "--data", str(data), "--name", "solar", "--time-column", "datetime_gmt", "--impute", "linear"]
    assert main([*args, "--forecast", "1", "--publish", str(models), "--epochs", "2", "--progress", "none"]) == 0
    assert "interpolated missing values along time (--impute linear): solar_gen (4)" in capsys.readouterr().err
    card = json.loads((models / "solar" / "1" / CARD_FILE).read_text())
    assert card["forecast"]["step_seconds"] == 1800 and card["input"]["sequence"]["step_seconds"] == 1800
    assert card["input"]["sequence"]["channel_names"] == ["solar_gen"] and card["data"]["time"]["step_seconds"] == 1800
    assert card["preprocessing"]["imputed"] == {"rule": "linear", "channels": {"solar_gen": 4}}
    with serve(models) as client:
        info = client.post("/v1/models/solar/predict", json={"inputs": [values[:30, None].tolist()]})
        assert info.status_code == 200, info.text


def test_bad_times_and_missing_series_values_are_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "runs"

    def refused(args: list[str], *expected: str) -> None:
        assert_refused(capsys, out, [*args, "--name", "s"], *expected)

    header, rows = _solar_rows()
    time = ["--time-column", "datetime_gmt"]
    refused(
        ["--data", str(sktime_file("Airline/Airline.csv")), "--time-column", "Date"],
        "the steps between rows are irregular: 4 distinct step sizes 31 days (x 83), 30 days (x 48), 28 days (x 9)",
        "ends at line 4",
    )
    gap = write_csv(tmp_path / "gap.csv", header, rows[:100] + rows[101:])
    refused(["--data", str(gap), *time], "2 distinct step sizes 30 min (x 286), 1 h (x 1)", "ends at line 102")
    twice = write_csv(tmp_path / "twice.csv", header, [*rows[:50], rows[20], *rows[50:]])
    refused(["--data", str(twice), *time], "series 'twice.csv': lines 22 and 52 have the same time")
    bad = [r[:] for r in rows]
    bad[7][0] = "yesterday"
    refused(["--data", str(write_csv(tmp_path / "t.csv", header, bad)), *time], "line 9, --time-column 'datetime_gmt'")
    refused(["--data", str(gap), "--time-column", "nope"], "--time-column 'nope': no such column")
    ts = str(sktime_file("ItalyPowerDemand/ItalyPowerDemand_TRAIN.ts"))
    refused(["--data", ts, *time], "--time-column, --columns and --ignore-columns apply to CSV/TSV series")
    refused(["--data", str(gap), "--kind", "vectors", *time], "--time-column applies to series (CSV/TSV), not vectors")
    # Missing values: refused naming the file, line and column unless --impute linear; never mean/median.
    holes = [r[:] for r in rows]
    holes[30][1] = "NA"
    holes[31][1] = ""
    with_holes = write_csv(tmp_path / "holes.csv", header, holes)
    refused(
        ["--data", str(with_holes), *time],
        "holes.csv: 2 missing value(s) (empty, NA or NaN cells), first at line 32, column 'solar_gen' (1)",
        "Series are not imputed unless asked",
        "--impute linear",
    )
    refused(["--data", str(with_holes), *time, "--impute", "median"], "--impute median: series are imputed along time")
    refused(["--data", str(with_holes), "--impute", "linear"], "--impute linear applies to series", "--kind series")
    long = [[f"m{i % 3}", *r] for i, r in enumerate(rows)]
    for r in long:
        if r[0] == "m1":
            r[2] = ""
    empty = write_csv(tmp_path / "machines.csv", ["machine", *header], long)
    refused(
        ["--data", str(empty), "--id-column", "machine", *time, "--impute", "linear"],
        "series 'm1', channel 'solar_gen': every one of its 96 values is missing",
    )


# -- several processes, large files -----------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, wine_csv):
    """DDP (gloo, CPU) in two processes: each takes half of every batch, only rank 0 writes; the result matches a
    single process's (same splits, same initialisation, averaged gradients)."""
    import subprocess
    import sys

    args = ["fit", "--data", str(wine_csv), "--name", "wine", "--ignore-columns", "target", "--epochs", "30"]
    args += ["--progress", "none"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training"]
    done = subprocess.run(
        [*launch, *args, "--out", str(tmp_path / "ddp")], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("written: ") == 1  # rank 0 alone prints and writes
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "ddp" / "wine" / CARD_FILE).read_text())
    one = json.loads((tmp_path / "one" / "wine" / CARD_FILE).read_text())
    assert two["training"]["processes"] == 2 and one["training"]["processes"] == 1
    a, b = two["metrics"]["test_mse_standardized"], one["metrics"]["test_mse_standardized"]
    assert abs(a - b) <= 0.05 * b, (a, b)
    assert sorted(p.name for p in (tmp_path / "ddp" / "wine").iterdir()) == [
        "card.json", "decoder.onnx", "encoder.onnx", "full.onnx",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_100_mb_csv_fits_in_bounded_memory(tmp_path):
    """~100 MB of CSV text (600,000 rows x 20 columns, read in blocks): peak RSS of the whole command stays under
    2 x the data as float32 + 500 MiB (imports of torch, ONNX and the service's card code included)."""
    import subprocess
    import sys

    rows, cols = 600_000, 20
    rng = np.random.default_rng(0)
    data = tmp_path / "big.csv"
    with open(data, "w") as fh:
        fh.write(",".join(f"c{i}" for i in range(cols)) + "\n")
        mix, scale = rng.standard_normal((4, cols)), rng.uniform(1, 100, cols)
        for _ in range(0, rows, 50_000):
            block = (rng.standard_normal((50_000, 4)) @ mix + 0.1 * rng.standard_normal((50_000, cols))) * scale
            np.savetxt(fh, block, fmt="%.6g", delimiter=",")
    assert data.stat().st_size > 90e6
    # VmHWM, the peak RSS of this process's own memory: getrusage's ru_maxrss carries over the peak of the forked
    # copy of the parent (this pytest process, torch loaded) across exec.
    script = (
        "import re, sys\nfrom pathlib import Path\nfrom training.__main__ import main\ncode = main(sys.argv[1:])\n"
        "print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1))\n"
        "sys.exit(code)\n"
    )
    args = ["fit", "--data", str(data), "--name", "big", "--out", str(tmp_path / "out"), "--epochs", "1"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args, "--progress", "none"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mib = int(done.stdout.split("PEAK_RSS_KB")[1].split()[0]) / 1024
    budget_mib = 2 * rows * cols * 4 / 2**20 + 500
    print(f"100 MB CSV: peak RSS {peak_mib:.0f} MiB, budget {budget_mib:.0f} MiB")
    assert peak_mib <= budget_mib
    card = json.loads((tmp_path / "out" / "big" / CARD_FILE).read_text())
    assert card["data"]["rows"] == rows and card["data"]["split"].startswith("420000 train")
