"""The hot path (app/asgi/hotpath.py): the inference routes answered without FastAPI's per-request machinery must
behave exactly as through FastAPI: same answers, same errors, same metrics labels, and FastAPI still takes
whatever the hot path does not (query options, other methods, paths that are not hot routes)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api import deps
from app.api.v1 import inference
from app.api.v2 import router as v2_router
from app.asgi.hotpath import HotPathMiddleware, HotRoute
from app.main import create_app
from app.settings import Settings

from .conftest import MODELS_DIR, assert_error, make_client, npy_bytes, sample_input


async def _never(*_: Any) -> Any:
    raise AssertionError("not called")


def _matcher(*paths: str) -> HotPathMiddleware:
    return HotPathMiddleware(_never, [HotRoute(path, _never) for path in paths])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/dense/encode", ("/v1/models/{name}/encode", {"name": "dense"})),
        ("/v1/encode", ("/v1/{task}", {"task": "encode"})),
        ("/v2/models/dense.encoder/infer", ("/v2/models/{name}/infer", {"name": "dense.encoder"})),
        (
            "/v2/models/dense/versions/1/infer",
            ("/v2/models/{name}/versions/{version}/infer", {"name": "dense", "version": "1"}),
        ),
        (
            "/v1/models/dense/versions/2/encode",
            ("/v1/models/{name}/versions/{version}/encode", {"name": "dense", "version": "2"}),
        ),
        ("/v1/models//encode", None),  # an empty parameter is not a match (Starlette's {name} neither)
        ("/v1/models/dense/encode/", None),  # trailing slash: FastAPI decides (redirect or 404)
        ("/v1/models/dense/decode", None),
        ("/v2/models/dense/versions/1/infer/x", None),
        ("", None),
        ("/", None),
    ],
)
def test_match_by_segments(path: str, expected: tuple[str, dict[str, str]] | None) -> None:
    middleware = _matcher(
        "/v1/models/{name}/encode",
        "/v1/{task}",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v1/models/{name}/versions/{version}/encode",
    )
    found = middleware.match(path)
    assert (None if found is None else (found[0].path, found[1])) == expected


def test_every_inference_route_is_hot_and_registered_with_fastapi() -> None:
    """The hot table and FastAPI's documented routes name the same POST paths: every hot route has its OpenAPI
    entry (and so its FastAPI fallback), every inference route is hot."""
    app = create_app(Settings(models_dir=MODELS_DIR, bench_endpoints=True, log_level="warning"))
    posts = {path for path, item in app.openapi()["paths"].items() if "post" in item}
    hot = {endpoint.path for endpoint in [*inference.ENDPOINTS, *v2_router.ENDPOINTS] if endpoint.hot}
    assert hot <= posts
    control = {p for p in posts if p.endswith(("/load", "/unload", "/promote"))}  # model control: not inference
    assert {p for p in posts if p.startswith("/v1/") or p.endswith("/infer")} - control == hot


@pytest.fixture
def no_dependencies() -> Any:
    """An app whose FastAPI dependencies fail: only the hot path can answer."""
    with make_client() as client:
        client.app.dependency_overrides[deps.get_context] = _dependency_used  # type: ignore[attr-defined]
        yield client


async def _dependency_used() -> None:
    raise RuntimeError("FastAPI's dependency solving ran")


def test_hot_path_skips_fastapi_and_query_options_take_fastapi(no_dependencies: TestClient) -> None:
    x = sample_input("dense", "encode", batch=2)
    body = {"inputs": x.tolist()}
    hot = no_dependencies.post("/v1/models/dense/encode", json=body)
    assert hot.status_code == 200, hot.text
    alias = no_dependencies.post("/v1/encode", json=body)
    assert alias.status_code == 200 and alias.json() == hot.json()
    v2 = no_dependencies.post(
        "/v2/models/dense.encoder/infer",
        json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]},
    )
    assert v2.status_code == 200, v2.text
    # The explicit-version routes are hot too, and answer what the default version does (dense has one version).
    versioned = no_dependencies.post("/v1/models/dense/versions/1/encode", json=body)
    assert versioned.status_code == 200 and versioned.json() == hot.json(), versioned.text
    v2_versioned = no_dependencies.post(
        "/v2/models/dense.encoder/versions/1/infer",
        json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]},
    )
    assert v2_versioned.status_code == 200 and v2_versioned.json()["outputs"] == v2.json()["outputs"]
    # With a query string the request goes through FastAPI, whose (overridden) dependency fails: a 500.
    slow = no_dependencies.post("/v1/models/dense/encode?preprocess=auto", json=body)
    assert_error(slow, 500, "internal_error")


NPY = {"content-type": "application/x-npy"}


def test_same_answers_and_errors_on_both_paths(client: TestClient) -> None:
    x = sample_input("dense", "encode", batch=3)
    for content, headers in ((npy_bytes(x), NPY), (None, None)):
        kwargs: dict[str, Any] = (
            {"content": content, "headers": headers} if content else {"json": {"inputs": x.tolist()}}
        )
        hot = client.post("/v1/models/dense/encode", **kwargs)
        slow = client.post("/v1/models/dense/encode?preprocess=auto", **kwargs)
        assert hot.status_code == slow.status_code == 200
        assert hot.json() == slow.json()
    cases = [
        ("/v1/models/nope/encode", {"json": {"inputs": [[0.0]]}}, 404, "model_not_found"),
        ("/v1/models/dense/encode", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, None),
        ("/v1/models/dense/encode", {"content": b"a,b", "headers": {"content-type": "text/csv"}}, 415, None),
        ("/v1/models/dense/encode", {"json": {"inputs": [[2.0] * 784]}}, 422, "value_out_of_range"),
        (
            "/v1/models/dense/encode",
            {"content": npy_bytes(np.full((1, 784), np.nan, np.float32)), "headers": NPY},
            422,
            None,
        ),
    ]
    for path, kwargs, status, error_type in cases:
        hot = client.post(path, **kwargs)
        slow = client.post(path + "?preprocess=auto", **kwargs)
        assert assert_error(hot, status, error_type) == assert_error(slow, status, error_type)


def test_v2_errors_keep_the_protocol_shape_on_the_hot_path(client: TestClient) -> None:
    response = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    response = client.post("/v2/models/dense.encoder/infer", content=b"x", headers={"content-type": "text/csv"})
    assert response.status_code == 415 and isinstance(response.json()["error"], str)


def test_other_methods_and_paths_still_go_to_fastapi(client: TestClient) -> None:
    assert_error(client.get("/v1/models/dense/encode"), 405)
    slash = client.post("/v1/models/dense/encode/", json={"inputs": [[0.0] * 784]}, follow_redirects=False)
    assert slash.status_code == 307 and slash.headers["location"].endswith("/v1/models/dense/encode")


def test_metrics_label_hot_requests_with_the_route_template(client: TestClient) -> None:
    client.post("/v1/models/dense/reconstruct", json={"inputs": [[0.0] * 784]})
    text = client.get("/metrics").text
    assert 'route="/v1/models/{name}/reconstruct"' in text
    assert 'route="/v1/models/dense/reconstruct"' not in text


def test_objects_alive_at_start_up_are_frozen_for_the_app_life() -> None:
    with make_client(gc_freeze=True):
        assert gc.get_freeze_count() > 0
    with make_client(gc_freeze=False) as client:
        gc.unfreeze()  # whatever an earlier app in this process left frozen
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0
