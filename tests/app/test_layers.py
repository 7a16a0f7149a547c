"""The layout is the architecture: each layer of `app/` imports only from the layers below it, and the core (the
card schema, the task table, the windowing, the noise estimator) imports without any web framework, so that
training, whose image has none, uses the very same code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.conftest import REPO

APP = REPO / "app"
LAYERS = ["runtime", "core", "api", "asgi", "server"]
"""Bottom to top; `app/settings.py` is below all of them, `app/main.py` above."""
WEB = ("fastapi", "starlette", "uvicorn", "httptools", "prometheus_client")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_from_the_layers_below_it(layer: str) -> None:
    above = LAYERS[LAYERS.index(layer) + 1 :]
    wrong = []
    for path in sorted((APP / layer).rglob("*.py")):
        for name in _imports(path):
            if name == "app.main" or any(name == f"app.{u}" or name.startswith(f"app.{u}.") for u in above):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong


def test_the_core_has_no_web_imports() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((APP / "core").rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in WEB
    ]
    assert not wrong, wrong


def test_training_can_import_the_shared_modules_without_the_web_stack() -> None:
    """What the training image has: no FastAPI, Starlette, uvicorn, pydantic-settings or ONNX Runtime."""
    blocked = [*WEB, "pydantic_settings", "onnxruntime"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from app.core.cards import CARD_FILE, ModelCard, window_starts\n"
        "from app.core.tasks import TASKS, check_card\n"
        "from app.core.noise import estimate_sigma\n"
        "print(sorted(TASKS))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "encode" in result.stdout
