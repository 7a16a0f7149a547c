"""OpenAPI is complete (every route, body format, response and error, with examples), and /docs and /redoc
render from local assets only."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.core.tasks import TASKS

IMAGE_TASKS = {name for name, task in TASKS.items() if task.gives_images}


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_route_is_documented(spec: dict) -> None:
    paths = spec["paths"]
    for route in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/{name}"):
        assert "get" in paths[route], route
    for task in TASKS:
        assert "post" in paths[f"/v1/models/{{name}}/{task}"]
        assert "post" in paths[f"/v1/{task}"]


@pytest.mark.parametrize("task", TASKS)
def test_task_routes_document_every_format(spec: dict, task: str) -> None:
    for path in (f"/v1/models/{{name}}/{task}", f"/v1/{task}"):
        operation = spec["paths"][path]["post"]
        assert operation["summary"] and operation["description"]
        body = operation["requestBody"]["content"]
        assert body["application/json"]["schema"]["properties"]["inputs"]["type"] == "array"
        assert body["application/json"]["examples"]  # named, runnable examples
        assert body["application/x-npy"]["schema"] == {"type": "string", "format": "binary"}
        if not TASKS[task].takes_images:
            assert "multipart/form-data" not in body
        else:
            assert body["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
            assert body["image/png"]["schema"]["format"] == "binary"
        responses = operation["responses"]
        ok = responses["200"]["content"]
        assert "$ref" in ok["application/json"]["schema"]
        assert ok["application/x-npy"]["schema"]["format"] == "binary"
        assert ("image/png" in ok) == (task in IMAGE_TASKS)
        for status in ("400", "404", "406", "413", "415", "422", "503"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        if TASKS[task].takes_images:
            names = {p["name"] for p in operation["parameters"]}
            assert {"preprocess", "invert"} <= names


def test_response_schemas_have_examples(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    for name in (
        "EncodeResponse",
        "DecodeResponse",
        "ReconstructResponse",
        "ScoreResponse",
        "DenoiseResponse",
        "PredictResponse",
        "ErrorResponse",
        "ModelSummary",
        "Readiness",
    ):
        assert schemas[name].get("examples"), name
    assert "HTTPValidationError" not in schemas  # our 422 shape replaces FastAPI's


def test_every_json_body_has_an_example(spec: dict) -> None:
    """Every request and response schema in the spec comes with an example."""
    schemas = spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            bodies = [("request", operation.get("requestBody", {}).get("content", {}).get("application/json"))]
            for status, response in operation["responses"].items():
                bodies.append((status, response.get("content", {}).get("application/json")))
            for where, media in bodies:
                if media is None:
                    continue
                schema = media["schema"]
                if "$ref" in schema:
                    schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
                assert media.get("examples") or media.get("example") or schema.get("examples"), (path, method, where)


def local_urls(html: str) -> list[str]:
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""(?:url|spec-url)\s*:\s*["']([^"']+)["']""", html)
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_local_assets_only(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html, "no CDN, no fonts, no validator"
    urls = local_urls(html)
    assert urls
    assets = [u for u in urls if u.startswith("/docs-assets/")]
    assert assets, urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0
    if page == "/docs":
        assert '"validatorUrl": null' in html
        assert {u.rsplit("/", 1)[-1] for u in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    else:
        assert any(u.endswith("redoc.standalone.js") for u in assets)
