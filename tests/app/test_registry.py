"""Loading: hashes, tensor specs against the ONNX files, warm-up, failures reported while the rest serve,
readiness (strict by default, or a named set), and the execution-provider choice."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pytest

from app.core.engine import InferenceEngine
from app.core.providers import CPU, CUDA, plan_providers, report_providers
from app.core.registry import ModelRegistry, ModelStatus, session_options
from app.settings import Settings
from tests.app.conftest import REPO, assert_error, make_client


def edit_card(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "card.json"
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))


def load(root: Path, **settings: object) -> ModelRegistry:
    config = Settings(models_dir=root, **settings)  # type: ignore[arg-type]
    registry = ModelRegistry(config, InferenceEngine(None, config))
    registry.load_all()
    return registry


def test_real_models_load_with_their_sessions_and_warm_up(models_dir: Path) -> None:
    registry = load(models_dir)
    for entry in registry.entries():
        assert entry.status is ModelStatus.READY, entry.reason
        assert entry.card is not None and set(entry.graphs) == set(entry.card.graphs)
        assert entry.providers is not None and entry.providers.used[0] == CPU
        assert entry.load_seconds is not None
    assert registry.readiness().ready


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("missing file", "cannot read encoder.onnx"),
        ("bad hash", "sha256 of encoder.onnx is"),
        ("wrong size", "bytes, the card says"),
        ("corrupt onnx", "ONNX Runtime cannot load encoder.onnx"),
        ("card shape", "the card says 33"),
        ("card name", "differs from its folder name"),
        ("card json", "invalid card"),
        ("file outside", "plain *.onnx file name"),
        ("task without graph", "needs output 'score'"),
        ("unknown task", "not one this service knows"),
    ],
)
def test_a_broken_model_fails_with_a_reason_and_the_others_serve(
    model_copy: Callable[..., Path], breakage: str, reason: str
) -> None:
    root = model_copy("dense", "denoise")
    folder = root / "dense"
    if breakage == "missing file":
        (folder / "encoder.onnx").unlink()
    elif breakage == "bad hash":
        data = bytearray((folder / "encoder.onnx").read_bytes())
        data[-1] ^= 0xFF
        (folder / "encoder.onnx").write_bytes(bytes(data))
    elif breakage == "wrong size":
        with open(folder / "encoder.onnx", "ab") as fh:
            fh.write(b"\0")
    elif breakage == "corrupt onnx":
        import hashlib

        junk = b"this is not an onnx model" * 10
        (folder / "encoder.onnx").write_bytes(junk)

        def fix(card: dict) -> None:
            card["graphs"]["encoder"]["sha256"] = hashlib.sha256(junk).hexdigest()
            card["graphs"]["encoder"]["bytes"] = len(junk)

        edit_card(folder, fix)
    elif breakage == "card shape":
        edit_card(folder, lambda c: c["graphs"]["encoder"]["outputs"][0].update(shape=["batch", 33]))
    elif breakage == "card name":
        edit_card(folder, lambda c: c.update(name="other"))
    elif breakage == "card json":
        (folder / "card.json").write_text("{not json")
    elif breakage == "file outside":
        edit_card(folder, lambda c: c["graphs"]["encoder"].update(file="../denoise/full.onnx"))
    elif breakage == "task without graph":
        edit_card(folder, lambda c: c["graphs"]["full"]["outputs"].pop())
    elif breakage == "unknown task":
        edit_card(folder, lambda c: c["tasks"].append("summarise"))
    registry = load(root)
    dense = registry.get("dense")
    assert dense.status is ModelStatus.FAILED and reason in (dense.reason or ""), dense.reason
    assert not dense.graphs
    assert registry.get("denoise").ready
    readiness = registry.readiness()
    assert not readiness.ready and reason in readiness.not_ready["dense"]


def test_dynamic_axis_fixed_in_the_file_is_refused(model_copy: Callable[..., Path]) -> None:
    """The exporter bug in PITFALLS (a dynamic LSTM length exported fixed) is caught at load by the spec check."""
    root = model_copy("denoise")
    folder = root / "denoise"
    edit_card(folder, lambda c: c["graphs"]["full"]["inputs"][0].update(shape=["batch", 1, "height", "width", "x"]))
    entry = load(root).get("denoise")
    assert entry.status is ModelStatus.FAILED and "shape" in (entry.reason or "")


def test_failed_model_is_503_over_http_and_readiness_reports_it(model_copy: Callable[..., Path]) -> None:
    root = model_copy("dense", "denoise")
    (root / "dense" / "decoder.onnx").write_bytes(b"tampered")
    with make_client(models_dir=root) as c:
        error = assert_error(c.post("/v1/encode", json={"inputs": [[0.0] * 784]}), 503, "model_unavailable")
        assert "decoder.onnx" in error["message"] and error["details"]["status"] == "failed"
        # the others serve
        assert c.post("/v1/models/denoise/denoise", json={"inputs": [[[0.0] * 8] * 8]}).status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and "decoder.onnx" in body["not_ready"]["dense"]
        assert body["models"]["dense"]["status"] == "failed" and body["models"]["denoise"]["status"] == "ready"
        assert body["error"]["type"] == "not_ready"
        detail = c.get("/v1/models/dense").json()
        assert detail["status"] == "failed" and "decoder.onnx" in detail["reason"]
    # Readiness limited to a named set: the broken optional model does not take the replica out of rotation.
    with make_client(models_dir=root, required_models=["denoise"]) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["required"] == ["denoise"]
    with make_client(models_dir=root, required_models=["denoise", "absent"]) as c:
        body = c.get("/readyz").json()
        assert body["ready"] is False and "no card found" in body["not_ready"]["absent"]


def test_no_models_is_not_ready(tmp_path: Path) -> None:
    with make_client(models_dir=tmp_path / "nowhere") as c:
        assert c.get("/healthz").status_code == 200
        body = c.get("/readyz").json()
        assert body["ready"] is False and "does not exist" in body["not_ready"]["*"]


def test_hidden_staging_folders_are_ignored(model_copy: Callable[..., Path]) -> None:
    root = model_copy("denoise")
    (root / ".dense.staging").mkdir()
    (root / ".dense.staging" / "card.json").write_text("{}")
    registry = load(root)
    assert registry.names() == ["denoise"] and registry.readiness().ready


# -- providers ------------------------------------------------------------------------------------------------
def test_default_preference_uses_cuda_only_when_offered() -> None:
    with_gpu = plan_providers(None, [CUDA, CPU])
    assert with_gpu.requested == (CUDA, CPU) and with_gpu.chosen == (CUDA, CPU) and not with_gpu.notes
    cpu_only = plan_providers(None, ["AzureExecutionProvider", CPU])
    assert cpu_only.requested == (CPU,) and cpu_only.chosen == (CPU,) and not cpu_only.notes


def test_cuda_requested_but_not_available_falls_back_to_cpu_and_says_so() -> None:
    plan = plan_providers([CUDA, CPU], [CPU])
    assert plan.chosen == (CPU,) and plan.skipped == (CUDA,)
    assert any("CUDAExecutionProvider requested" in note for note in plan.notes)
    report = report_providers(plan, [CPU])
    assert report.fallback and report.as_dict()["used"] == [CPU]


def test_nothing_available_still_runs_on_cpu() -> None:
    plan = plan_providers(["TensorrtExecutionProvider"], [CPU])
    assert plan.chosen == (CPU,) and any("none of the requested" in n for n in plan.notes)


def test_silent_runtime_fallback_is_detected(models_dir: Path) -> None:
    """ORT given a provider it cannot use runs on CPU with only a warning: comparing the session's real
    providers with the plan exposes it (here with a real session and a provider this build lacks)."""
    plan = plan_providers([CUDA, CPU], [CUDA, CPU])  # as a GPU build whose CUDA libraries are missing claims
    options = session_options(Settings(models_dir=models_dir))
    options.log_severity_level = 4
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # all ORT says: a warning, then CPU
        session = ort.InferenceSession(str(models_dir / "dense" / "encoder.onnx"), options, providers=list(plan.chosen))
    report = report_providers(plan, session.get_providers())
    assert report.used == (CPU,)
    assert report.fallback
    assert any(
        "CUDAExecutionProvider was passed to ONNX Runtime but the session does not use it" in n for n in report.notes
    )


def test_provider_setting_is_reported_per_model() -> None:
    with make_client(providers=[CUDA, CPU]) as c:
        providers = c.get("/v1/models/dense").json()["providers"]
        assert providers["requested"] == [CUDA, CPU]
        assert providers["used"] == [CPU] and providers["fallback"] is True
        assert any("CUDAExecutionProvider" in note for note in providers["notes"])
        assert c.get("/readyz").json()["models"]["dense"] == {
            "status": "ready",
            "reason": None,
            "providers": [CPU],
            "fallback": True,
            "default_version": "1",
            "versions": {"1": {"version": "1", "status": "ready", "reason": None, "default": True}},
        }
        assert c.post("/v1/encode", json={"inputs": [[0.0] * 784]}).status_code == 200


def test_session_options_follow_the_settings(models_dir: Path) -> None:
    options = session_options(
        Settings(models_dir=models_dir, intra_op_threads=3, inter_op_threads=2, graph_optimization="basic")
    )
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_cpu_mem_arena  # on unless turned off: big-image speed (its memory is bounded by batching)
    assert not session_options(Settings(models_dir=models_dir, cpu_mem_arena=False)).enable_cpu_mem_arena
    auto = Settings(models_dir=models_dir, workers=2)
    assert auto.ort_intra_op_threads() >= 1


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("AE_REQUIRED_MODELS", "dense, denoise")
    monkeypatch.setenv("AE_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    monkeypatch.setenv("AE_MAX_BATCH_ROWS", "17")
    monkeypatch.setenv("AE_DEFAULT_ENCODE_MODEL", "conv")
    settings = Settings()
    assert settings.models_dir == Path("/srv/models")
    assert settings.required_models == ["dense", "denoise"]
    assert settings.providers == [CUDA, CPU]
    assert settings.max_batch_rows == 17 and settings.default_model("encode") == "conv"


MEMORY_PROBE = """
import sys, numpy as np
from pathlib import Path
from app.core.registry import ModelRegistry
from app.core.engine import InferenceEngine
from app.settings import Settings

def rss_mib():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

settings = Settings(models_dir=Path(sys.argv[1]), cpu_mem_arena=sys.argv[2] == "on", log_level="error")
registry = ModelRegistry(settings, InferenceEngine(None, settings))
registry.load_all()
graph = registry.get("denoise").graphs["full"]
x = np.random.default_rng(0).uniform(0, 1, (9, 1, 256, 256)).astype(np.float32)
before = rss_mib()
for _ in range(2):
    graph.session.run(None, {graph.inputs[0].name: x})
print(rss_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_without_the_arena_a_big_batch_does_not_keep_its_memory(models_dir: Path, tmp_path: Path) -> None:
    """Without the arena a big batch's memory is given back; with it, it is kept (what the setting is for)."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "denoise").symlink_to(models_dir / "denoise", target_is_directory=True)

    def growth(arena: str) -> float:
        command = [sys.executable, "-c", MEMORY_PROBE, str(root), arena]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        return float(done.stdout.strip().splitlines()[-1])

    off, on = growth("off"), growth("on")
    assert off < 200, f"RSS grew {off:.0f} MiB without the arena"
    assert on > off + 150, f"arena on grew {on:.0f} MiB, off {off:.0f} MiB"
