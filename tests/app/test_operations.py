"""Health, readiness, metrics, request ids and the structured request log."""

from __future__ import annotations

import logging

import orjson
import pytest
from fastapi.testclient import TestClient

from app.api.schemas import ModelDetail, ModelList, Readiness
from app.runtime.logs import JsonFormatter
from tests.app.conftest import CARDS, assert_error


def test_liveness(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readiness_lists_every_model_with_providers(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = Readiness.model_validate(response.json())
    assert body.ready and body.not_ready == {} and body.error is None
    assert set(body.required) == set(CARDS) == set(body.models)
    assert all(m.status == "ready" and m.providers == ["CPUExecutionProvider"] for m in body.models.values())


def test_model_list_and_detail(client: TestClient) -> None:
    listing = ModelList.model_validate(client.get("/v1/models").json())
    for summary in listing.models:
        assert summary.endpoints == {t: f"/v1/models/{summary.name}/{t}" for t in CARDS[summary.name]["tasks"]}
        detail = ModelDetail.model_validate(client.get(f"/v1/models/{summary.name}").json())
        card = CARDS[summary.name]
        assert detail.tasks == card["tasks"] and detail.version == card["version"]
        for role, graph in card["graphs"].items():
            assert detail.graphs[role].sha256 == graph["sha256"]
            assert [t.model_dump() for t in detail.graphs[role].inputs] == [
                {k: t[k] for k in ("name", "shape", "dtype", "range", "layout", "description")} for t in graph["inputs"]
            ]
        assert detail.metrics == card["metrics"]
        assert detail.preprocessing == card.get("preprocessing")
        assert detail.providers is not None and detail.providers.used == ["CPUExecutionProvider"]
        if card["input"]["layout"] == "sequence":
            assert detail.pixel_scale is None and detail.input["sequence"]["channels"] == 6
        else:
            assert "[0, 1]" in (detail.pixel_scale or "")


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    unsafe = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    error = client.get("/v1/models/nope", headers={"x-request-id": "err-1"})
    assert error.headers["x-request-id"] == "err-1"
    assert_error(error, 404)


def test_metrics_count_requests_errors_latency_and_batch_sizes(client: TestClient) -> None:
    client.post("/v1/models/dense/encode", json={"inputs": [[0.0] * 784] * 5})
    client.post("/v1/models/dense/encode", json={"inputs": [[2.0] * 784]})
    client.get("/v1/models/no-such-model")
    text = client.get("/metrics").text
    route = 'route="/v1/models/{name}/encode"'
    assert f'ae_http_requests_total{{method="POST",model="dense",{route},status="200",version="1"}}' in text
    assert f'ae_http_errors_total{{model="dense",{route},type="value_out_of_range",version="1"}}' in text
    assert f'ae_http_request_duration_seconds_bucket{{le="0.005",model="dense",{route},version="1"}}' in text
    encoder = 'endpoint="encode",graph="encoder"'
    assert f'ae_inference_batch_size_bucket{{{encoder},le="8.0",model="dense",version="1"}}' in text
    assert f'ae_inference_duration_seconds_count{{{encoder},model="dense",version="1"}}' in text
    assert 'ae_model_ready{model="denoise",version="1"} 1.0' in text
    # Unknown names never become label values (bounded cardinality).
    assert "no-such-model" not in text
    assert 'ae_http_requests_total{method="GET",model="",route="/v1/models/{name}",status="404",version=""}' in text


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_log() -> Collect:
    handler = Collect()
    logger = logging.getLogger("app.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_one_json_log_line_per_request(client: TestClient, access_log: Collect) -> None:
    client.post("/v1/reconstruct", json={"inputs": [[0.0] * 784]}, headers={"x-request-id": "log-me"})
    client.post("/v1/models/conv/encode", json={"inputs": [[0.0]]}, headers={"x-request-id": "log-err"})
    entries = [orjson.loads(line) for line in access_log.lines]
    ok = next(e for e in entries if e["request_id"] == "log-me")
    assert ok["model"] == "dense" and ok["route"] == "/v1/reconstruct" and ok["task"] == "reconstruct"
    assert ok["status"] == 200 and ok["latency_ms"] > 0 and ok["level"] == "info" and ok["message"] == "request"
    bad = next(e for e in entries if e["request_id"] == "log-err")
    assert bad["status"] == 422 and bad["error_type"] == "invalid_input" and bad["model"] == "conv"
    assert len([e for e in entries if e["request_id"] in ("log-me", "log-err")]) == 2
