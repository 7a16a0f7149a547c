"""`score` with the request's own threshold: `?threshold=` (a score) or `?quantile=` (of the validation scores the
card records), checked against ONNX Runtime's scores; the answer always states the threshold used."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import CARDS, Reference, assert_error, load_npy, make_client, npy_bytes, sample_input

GRID = 1001


def _score(client: TestClient, model: str, x: np.ndarray, **query: object) -> dict:
    response = client.post(f"/v1/models/{model}/score", params=query, json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def _scores(reference: Reference, model: str, x: np.ndarray) -> np.ndarray:
    return reference.run(model, "full", x)["score"].astype(np.float64)


def test_card_threshold_by_default(client: TestClient, reference: Reference) -> None:
    x = sample_input("dense", "score", batch=6)
    body = _score(client, "dense", x)
    card = CARDS["dense"]["anomaly"]
    assert body["threshold"] == pytest.approx(card["threshold"])
    assert body["threshold_source"] == "card"
    assert body["threshold_rule"] == card["threshold_rule"]


def test_request_threshold_flags_by_it(client: TestClient, reference: Reference) -> None:
    x = sample_input("dense", "score", batch=8, seed=3)
    scores = _scores(reference, "dense", x)
    cut = float(np.median(scores))  # half the rows above it, whatever the card says
    body = _score(client, "dense", x, threshold=cut)
    assert body["threshold"] == pytest.approx(cut)
    assert body["threshold_source"] == "request"
    assert body["threshold_rule"] == "given by the request"
    assert body["anomalous"] == [bool(s > cut) for s in body["scores"]]
    assert 0 < sum(body["anomalous"]) < len(x)
    np.testing.assert_allclose(body["scores"], scores, rtol=0, atol=1e-5)


def test_npy_answer_states_the_threshold_in_headers(client: TestClient) -> None:
    x = sample_input("dense", "score", batch=2)
    response = client.post(
        "/v1/models/dense/score",
        params={"threshold": 0.125},
        content=npy_bytes(x),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert response.status_code == 200, response.text
    assert float(response.headers["x-threshold"]) == 0.125
    assert response.headers["x-threshold-source"] == "request"
    assert load_npy(response.content).shape == (2,)


def test_sequence_model_takes_a_threshold_too(client: TestClient, reference: Reference) -> None:
    x = sample_input("lstm-anomaly", "score", batch=2, time=40)
    default = _score(client, "lstm-anomaly", x)
    low = min(default["scores"]) / 2
    body = _score(client, "lstm-anomaly", x, threshold=low)
    assert body["scores"] == pytest.approx(default["scores"])
    assert body["anomalous"] == [True, True]
    assert body["threshold"] == pytest.approx(low)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"threshold": "nan"}, "threshold"),
        ({"threshold": "inf"}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"quantile": 1.5}, "quantile"),
        ({"quantile": -0.1}, "quantile"),
        ({"threshold": 0.1, "quantile": 0.9}, "quantile"),
    ],
)
def test_bad_threshold_options_are_422(client: TestClient, query: dict, field: str) -> None:
    x = sample_input("dense", "score", batch=1)
    response = client.post("/v1/models/dense/score", params=query, json={"inputs": x.tolist()})
    error = assert_error(response, 422)
    assert field in json.dumps(error)


def test_options_belong_to_score_only(client: TestClient) -> None:
    """Other tasks do not take them: FastAPI ignores unknown query options, the answer is the plain one."""
    x = sample_input("dense", "reconstruct", batch=1)
    response = client.post("/v1/models/dense/reconstruct", params={"threshold": 0.1}, json={"inputs": x.tolist()})
    assert response.status_code == 200
    assert "threshold" not in response.json()


@pytest.fixture
def graded_copy(model_copy: Callable[..., Path], reference: Reference) -> tuple[Path, np.ndarray]:
    """`dense` whose card records named quantiles and a grid, from scores this test knows."""
    root = model_copy("dense")
    rng = np.random.default_rng(7)
    validation = rng.gamma(2.0, 0.01, size=500)
    card_path = root / "dense" / "card.json"
    card = json.loads(card_path.read_text())
    card["anomaly"].update(
        quantile=0.99,
        validation_quantiles={f"{q:g}": float(np.quantile(validation, q)) for q in (0.5, 0.9, 0.95, 0.99, 0.999)},
        validation_score_quantiles=[float(v) for v in np.quantile(validation, np.linspace(0, 1, GRID))],
    )
    card_path.write_text(json.dumps(card))
    return root, validation


def test_quantile_picks_from_the_validation_scores(graded_copy: tuple[Path, np.ndarray], reference: Reference) -> None:
    root, validation = graded_copy
    x = sample_input("dense", "score", batch=6, seed=5)
    with make_client(models_dir=root) as client:
        named = _score(client, "dense", x, quantile=0.95)
        assert named["threshold"] == pytest.approx(np.quantile(validation, 0.95), rel=1e-12)
        assert named["threshold_source"] == "quantile"
        assert "0.95 quantile" in named["threshold_rule"]
        assert named["anomalous"] == [bool(s > named["threshold"]) for s in named["scores"]]
        # Off the named ones: interpolated on the 1,001-point grid (exact at its points, close between them).
        on_grid = _score(client, "dense", x, quantile=0.873)
        assert on_grid["threshold"] == pytest.approx(np.quantile(validation, 0.873), rel=1e-9)
        between = _score(client, "dense", x, quantile=0.8735)
        assert between["threshold"] == pytest.approx(np.quantile(validation, 0.8735), rel=1e-3)
        lowest = _score(client, "dense", x, quantile=0.0)
        assert lowest["threshold"] == pytest.approx(validation.min())
        assert all(lowest["anomalous"]) == bool((np.asarray(lowest["scores"]) > validation.min()).all())


def test_quantile_on_a_card_without_them_names_what_it_offers(client: TestClient) -> None:
    card = CARDS["dense"]["anomaly"]
    x = sample_input("dense", "score", batch=1)
    response = client.post("/v1/models/dense/score", params={"quantile": 0.95}, json={"inputs": x.tolist()})
    if card.get("validation_score_quantiles"):
        assert response.status_code == 200
        return
    error = assert_error(response, 422, "invalid_input")
    assert "quantile 0.95" in error["message"]
    assert "offers" in error["message"]


def test_named_quantiles_only_offer_those(model_copy: Callable[..., Path]) -> None:
    root = model_copy("dense")
    card_path = root / "dense" / "card.json"
    card = json.loads(card_path.read_text())
    card["anomaly"].pop("validation_score_quantiles", None)
    card["anomaly"]["validation_quantiles"] = {"0.9": 0.01, "0.99": 0.02}
    card_path.write_text(json.dumps(card))
    x = sample_input("dense", "score", batch=1)
    with make_client(models_dir=root) as client:
        assert _score(client, "dense", x, quantile=0.99)["threshold"] == 0.02
        response = client.post("/v1/models/dense/score", params={"quantile": 0.95}, json={"inputs": x.tolist()})
        error = assert_error(response, 422, "invalid_input")
        assert "one of 0.9, 0.99" in error["message"]


def test_card_with_a_bad_quantile_key_is_refused(model_copy: Callable[..., Path]) -> None:
    root = model_copy("dense")
    card_path = root / "dense" / "card.json"
    card = json.loads(card_path.read_text())
    card["anomaly"]["validation_quantiles"] = {"p99": 0.02}
    card_path.write_text(json.dumps(card))
    x = sample_input("dense", "score", batch=1)
    with make_client(models_dir=root) as client:
        model = client.get("/v1/models/dense").json()
        assert model["status"] == "failed"
        assert "validation_quantiles: key 'p99' is not a number" in model["reason"]
        response = client.post("/v1/models/dense/score", json={"inputs": x.tolist()})
        error = assert_error(response, 503, "model_unavailable")
        assert "p99" in error["message"]
