"""Property-based run of schemathesis over the whole OpenAPI schema of a real service process: whatever it sends
(valid and invalid requests for every operation), the answer is never a server error, and its status, media
type and body conform to what the schema documents. The number of examples per operation is bounded (the run
takes well under a minute here); `SCHEMA_FUZZ_EXAMPLES` raises it for a longer local run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import MODELS_DIR
from tests.app.live import LiveServer, running

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("schema-fuzz") / "server.log"
    with running(models_dir, log, {"AE_LOG_LEVEL": "warning"}) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(api_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{api_server.base}/openapi.json")


def documented_operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every operation the app documents (building the app loads no model): valid
    requests for each, and requests that break the schema for those whose schema can be broken (a body or a
    query parameter: a GET with only a free-form path parameter has no invalid request)."""
    spec = create_app(Settings(models_dir=MODELS_DIR, log_level="warning")).openapi()
    runs = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            runs.append((method.upper(), path, GenerationMode.POSITIVE))
            queries = [p for p in operation.get("parameters", []) if p.get("in") == "query"]
            if "requestBody" in operation or queries:
                runs.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(runs, key=lambda run: (run[1], run[0], run[2].value))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [pytest.param(*run, id=f"{run[0]} {run[1]} {run[2].value}") for run in documented_operations()],
)
def test_every_operation_conforms_and_never_fails(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """Valid requests (positive) and requests that break the schema (negative) alike."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()
