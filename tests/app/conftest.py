"""Fixtures for the service tests: the committed models, an in-process app, direct ONNX Runtime references.

The tests run against the real models directory (`models/`, or `AE_MODELS_DIR` when set): no fallback, no mocks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.tasks import TASKS
from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("AE_MODELS_DIR", REPO / "models")).resolve()
TOLERANCE = 1e-5
# The apps and servers the tests start serve no gRPC unless a test asks for it (`--grpc-port`, tests/app/test_grpc.py):
# many apps at once, and other test runs on this machine, would all bind the default port 8001.
os.environ.setdefault("AE_GRPC_PORT", "0")
EXPECTED_MODELS = {
    "dense",
    "dense-shallow",
    "conv",
    "conv-dense-latent",
    "denoise",
    "lstm",
    "lstm-anomaly",
    "lstm-forecast",
    "photo",
    # The seed documents' designs as written (issue 18).
    "dense-seed",
    "conv-dense-latent-seed",
    "conv-seed",
    "noise-cancel-seed",
    "lstm-seed",
    "lstm-forecast-seed",
}
TASK_GRAPH = {name: task.graph for name, task in TASKS.items()}


def discover_cards() -> dict[str, dict[str, Any]]:
    """Every card in the models directory (read at collection time to parametrise the tests)."""
    if not MODELS_DIR.is_dir():
        return {}
    cards = {}
    for path in sorted(MODELS_DIR.glob("*/card.json")):
        if not path.parent.name.startswith("."):
            cards[path.parent.name] = json.loads(path.read_text())
    return cards


CARDS = discover_cards()
MODEL_TASKS = [(name, task) for name, card in CARDS.items() for task in card["tasks"]]


def task_params() -> list[Any]:
    return [pytest.param(name, task, id=f"{name}-{task}") for name, task in MODEL_TASKS]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    if not CARDS:
        pytest.fail(f"no model cards in {MODELS_DIR}: the service tests run against the committed models")
    return MODELS_DIR


@pytest.fixture(scope="session")
def settings(models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, log_level="warning")


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    """One in-process app for the session; the context manager runs the lifespan (loads the models)."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def make_client(**overrides: Any) -> TestClient:
    """A TestClient for an app with different settings (use as a context manager)."""
    base: dict[str, Any] = {"models_dir": MODELS_DIR, "log_level": "warning"}
    base.update(overrides)
    return TestClient(create_app(Settings(**base)))


class Reference:
    """Direct ONNX Runtime sessions on the model files, independent of the service's registry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sessions: dict[tuple[str, str], ort.InferenceSession] = {}

    def session(self, model: str, graph: str) -> ort.InferenceSession:
        key = (model, graph)
        if key not in self._sessions:
            path = self.root / model / CARDS[model]["graphs"][graph]["file"]
            self._sessions[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def run(self, model: str, graph: str, x: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs on `x` (its first input) and `extra` (its other inputs, by name)."""
        session = self.session(model, graph)
        names = [o.name for o in session.get_outputs()]
        values = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32), **extra})
        return dict(zip(names, values, strict=True))


@pytest.fixture(scope="session")
def reference(models_dir: Path) -> Reference:
    return Reference(models_dir)


def input_spec(model: str, task: str) -> dict[str, Any]:
    return CARDS[model]["graphs"][TASK_GRAPH[task]]["inputs"][0]


def sample_input(model: str, task: str, batch: int = 3, time: int = 37, side: int = 28, seed: int = 0) -> np.ndarray:
    """A random batch inside the tensor's range, shaped as the card says."""
    spec = input_spec(model, task)
    sizes = {"batch": batch, "time": time, "height": side, "width": side + 4}
    shape = [d if isinstance(d, int) else sizes[d] for d in spec["shape"]]
    low, high = spec["range"] or [None, None]
    rng = np.random.default_rng(seed)
    low = -3.0 if low is None else low
    high = 3.0 if high is None else high
    if CARDS[model]["input"]["layout"] == "sequence" and task != "decode":
        # Raw sensor units: accelerometer around gravity, gyroscope small.
        return rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    return rng.uniform(low, high, size=shape).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def png_bytes(pixels_u8: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save: Any) -> bytes:
    image = Image.fromarray(pixels_u8)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def assert_error(response: Any, status: int, error_type: str | None = None) -> dict[str, Any]:
    """The one error shape, with the right status (and type)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"type", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    assert response.headers.get("x-request-id")
    return error


@pytest.fixture
def model_copy(tmp_path: Path, models_dir: Path) -> Callable[..., Path]:
    """Copy some real models into a fresh models directory, to break them on purpose."""

    def copy(*names: str) -> Path:
        root = tmp_path / "models"
        root.mkdir(exist_ok=True)
        for name in names:
            shutil.copytree(models_dir / name, root / name)
        return root

    return copy
