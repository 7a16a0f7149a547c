"""Model versions (app/core/versions.py, the registry, every route): a models directory built here with models in
the flat layout beside `2/`, `3/` folders whose graphs compute different things (z = k * x, k the version), the
version policies of `versions.json`, a card whose version disagrees with its folder, and the real `dense` with a
second version. Every answer is compared with that version's ONNX file run directly in ONNX Runtime and must name
the version that computed it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from app.core.versions import PolicyError, VersionPolicy, parse_policy, version_number

from .conftest import MODELS_DIR, TOLERANCE, assert_error, load_npy, make_client, npy_bytes
from .live import running
from .tiny_models import write_encoder_model

X = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], dtype=np.float32)


def write_scale(root: Path, name: str, version: int, card_version: str | None = None, flat: bool = False) -> Path:
    """Model `name` version `version`: z = version * x, in `root/name/` (flat: write it first) or
    `root/name/<version>/`; the card says `card_version` (by default the version)."""
    folder = root / name if flat else root / name / str(version)
    factor = numpy_helper.from_array(np.array(float(version), dtype=np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["z"])],
        f"scale{version}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [factor],
    )
    text = card_version or str(version)
    write_encoder_model(folder, graph, f"z = {version} x", [0.0, 1.0], name=name, version=text)
    return folder


def write_policy(root: Path, name: str, policy: Any) -> None:
    (root / name / "versions.json").write_text(json.dumps(policy))


def build_repository(root: Path) -> Path:
    root.mkdir()
    for name, versions in {"latest": 3, "every": 2, "pinned": 3, "two": 3, "mismatch": 2}.items():
        write_scale(root, name, 1, flat=True)
        for number in range(2, versions + 1):
            write_scale(root, name, number, card_version="5" if name == "mismatch" else None)
    write_policy(root, "every", {"policy": "all"})
    write_policy(root, "pinned", {"policy": {"specific": {"versions": [1, 3]}}, "default": 1})
    write_policy(root, "two", {"policy": {"latest": {"num_versions": 2}}})
    write_policy(root, "mismatch", {"policy": "all"})
    # The real dense model, flat, and a version 2 folder holding the same graphs with its card saying "2".
    shutil.copytree(MODELS_DIR / "dense", root / "dense")
    second = root / "dense" / "2"
    second.mkdir()
    for path in (root / "dense").glob("*.onnx"):
        shutil.copy(path, second / path.name)
    card = json.loads((root / "dense" / "card.json").read_text())
    (second / "card.json").write_text(json.dumps({**card, "version": "2"}))
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("versions") / "models")


@pytest.fixture(scope="module")
def versioned(repository: Path) -> Iterator[TestClient]:
    with make_client(models_dir=repository, default_encode_model="every") as client:
        yield client


def direct(repository: Path, name: str, version: int, x: np.ndarray = X, graph: str = "encoder") -> np.ndarray:
    """That version's graph run directly in ONNX Runtime (the flat files are version 1)."""
    folder = repository / name if version == 1 else repository / name / str(version)
    session = ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def v2_body(x: np.ndarray = X) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


# -- the policy file -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("3", 3), ("42", 42), ("0", None), ("01", None), ("-1", None), ("1.0", None), ("x", None), ("", None),
     ("٣", None), ("99999999999", None)],
)  # fmt: skip
def test_version_numbers_are_plain_positive_integers(text: str, expected: int | None) -> None:
    assert version_number(text) == expected


@pytest.mark.parametrize(
    ("raw", "selected", "default"),
    [
        ({}, [3], None),
        ({"policy": "all"}, [1, 2, 3], None),
        ({"policy": {"all": {}}}, [1, 2, 3], None),
        ({"policy": {"latest": {"num_versions": 2}}}, [2, 3], None),
        ({"policy": {"latest": 5}}, [1, 2, 3], None),
        ({"policy": {"specific": {"versions": [3, 1]}}, "default": 1}, [1, 3], 1),
        ({"policy": {"specific": [2]}}, [2], None),
        ({"default": 3}, [3], 3),
    ],
)
def test_policies_select_versions(raw: dict[str, Any], selected: list[int], default: int | None) -> None:
    policy = parse_policy(raw)
    assert policy.select([1, 2, 3]) == selected
    assert policy.default == default
    assert parse_policy({"policy": policy.as_dict(), "default": default}) == policy  # as_dict round-trips


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "expected an object"),
        ({"policy": "newest"}, "'policy' must be"),
        ({"policy": {"latest": 0}}, "must be a positive integer"),
        ({"policy": {"latest": {"count": 2}}}, "num_versions"),
        ({"policy": {"specific": []}}, "non-empty list"),
        ({"policy": {"specific": {"versions": ["2"]}}}, "must be a positive integer"),
        ({"policy": {"specific": [1]}, "default": 2}, "default version 2 is not among"),
        ({"default": True}, "'default' must be a positive integer"),
        ({"polcy": "all"}, "unknown key(s) ['polcy']"),
    ],
)
def test_malformed_policies_are_named(raw: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=r"versions\.json") as caught:
        parse_policy(raw)
    assert message in str(caught.value)
    assert VersionPolicy().select([4, 1, 2]) == [4]  # no file: the latest only


# -- the registry through the routes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "states", "default", "policy", "on_disk"),
    [
        ("latest", {"3": "ready"}, "3", {"latest": {"num_versions": 1}}, ["1", "2", "3"]),
        ("every", {"1": "ready", "2": "ready"}, "2", {"all": {}}, ["1", "2"]),
        ("pinned", {"1": "ready", "3": "ready"}, "1", {"specific": {"versions": [1, 3]}}, ["1", "2", "3"]),
        ("two", {"2": "ready", "3": "ready"}, "3", {"latest": {"num_versions": 2}}, ["1", "2", "3"]),
        ("mismatch", {"1": "ready", "2": "failed"}, "1", {"all": {}}, ["1", "2"]),
        ("dense", {"2": "ready"}, "2", {"latest": {"num_versions": 1}}, ["1", "2"]),
    ],
)
def test_versions_listing(
    versioned: TestClient, name: str, states: dict[str, str], default: str, policy: Any, on_disk: list[str]
) -> None:
    listing = versioned.get(f"/v1/models/{name}/versions")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["name"] == name and body["default_version"] == default and body["policy"] == policy
    assert body["on_disk"] == on_disk
    assert {v["version"]: v["status"] for v in body["versions"]} == states
    assert [v["version"] for v in body["versions"] if v["default"]] == [default]
    assert [v["version"] for v in body["versions"]] == sorted(states, key=int)
    detail = versioned.get(f"/v1/models/{name}").json()
    assert detail["version"] == default and detail["default_version"] == default
    assert detail["versions"] == body["versions"]


def test_a_card_whose_version_is_not_its_folder_is_refused_and_the_others_serve(versioned: TestClient) -> None:
    versions = {v["version"]: v for v in versioned.get("/v1/models/mismatch/versions").json()["versions"]}
    reason = versions["2"]["reason"]
    assert reason == "mismatch: the card says version '5', but it sits in mismatch/2/ (version 2)"
    assert versions["1"]["reason"] is None
    ok = versioned.post("/v1/models/mismatch/encode", json={"inputs": X.tolist()})
    assert ok.status_code == 200 and ok.headers["x-model-version"] == "1"
    error = assert_error(
        versioned.post("/v1/models/mismatch/versions/2/encode", json={"inputs": X.tolist()}), 503, "model_unavailable"
    )
    assert reason in error["message"] and error["details"]["version"] == "2"
    v2 = versioned.post("/v2/models/mismatch/versions/2/infer", json=v2_body())
    assert v2.status_code == 503 and reason in v2.json()["error"]
    assert versioned.get("/v2/models/mismatch/versions/2/ready").status_code == 503
    # One failed version beside a serving one keeps the replica ready.
    assert versioned.get("/readyz").status_code == 200


def test_flat_version_mismatch_is_refused_too(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scale(root, "flat", 1, card_version="2", flat=True)
    write_scale(root, "other", 1, flat=True)
    with make_client(models_dir=root, required_models=["other"]) as client:
        state = client.get("/v1/models/flat/versions").json()["versions"]
        assert state == [
            {
                "version": "1",
                "status": "failed",
                "reason": "flat: the card says version '2', but files directly in flat/ are version 1",
                "default": False,
            }
        ]
        assert client.get("/v1/models/flat").json()["status"] == "failed"
        assert client.post("/v1/models/other/encode", json={"inputs": X.tolist()}).status_code == 200


@pytest.mark.parametrize(
    ("name", "version"),
    [("latest", 3), ("every", 1), ("every", 2), ("pinned", 1), ("pinned", 3), ("two", 2), ("two", 3), ("mismatch", 1)],
)
def test_explicit_versions_on_v1_and_v2(versioned: TestClient, repository: Path, name: str, version: int) -> None:
    expected = direct(repository, name, version)
    np.testing.assert_allclose(expected, version * X, rtol=0, atol=TOLERANCE)  # the versions really differ
    answer = versioned.post(f"/v1/models/{name}/versions/{version}/encode", json={"inputs": X.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == str(version) and answer.headers["x-model"] == name
    body = answer.json()
    assert body["model_version"] == str(version)
    np.testing.assert_allclose(np.asarray(body["latent"], np.float32), expected, rtol=0, atol=TOLERANCE)
    npy = versioned.post(
        f"/v1/models/{name}/versions/{version}/encode",
        content=npy_bytes(X),
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert npy.headers["x-model-version"] == str(version)
    np.testing.assert_allclose(load_npy(npy.content), expected, rtol=0, atol=TOLERANCE)
    v2_name = f"{name}.encoder"  # the tiny models have an encoder graph only
    v2 = versioned.post(f"/v2/models/{v2_name}/versions/{version}/infer", json=v2_body())
    assert v2.status_code == 200, v2.text
    out = v2.json()
    assert out["model_name"] == v2_name and out["model_version"] == str(version)
    np.testing.assert_allclose(
        np.asarray(out["outputs"][0]["data"], np.float32).reshape(X.shape), expected, rtol=0, atol=TOLERANCE
    )
    ready = versioned.get(f"/v2/models/{v2_name}/versions/{version}/ready")
    assert ready.json() == {"name": v2_name, "ready": True}
    assert versioned.get(f"/v2/models/{v2_name}/versions/{version}/config").json()["name"] == v2_name
    stats = versioned.get(f"/v2/models/{v2_name}/versions/{version}/stats").json()["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(v2_name, str(version))]
    assert stats[0]["execution_count"] >= 1


@pytest.mark.parametrize(("name", "default"), [("latest", 3), ("every", 2), ("pinned", 1), ("two", 3)])
def test_routes_without_a_version_use_the_default(
    versioned: TestClient, repository: Path, name: str, default: int
) -> None:
    expected = direct(repository, name, default)
    answer = versioned.post(f"/v1/models/{name}/encode", json={"inputs": X.tolist()})
    assert answer.headers["x-model-version"] == str(default) and answer.json()["model_version"] == str(default)
    np.testing.assert_allclose(np.asarray(answer.json()["latent"], np.float32), expected, rtol=0, atol=TOLERANCE)
    v2 = versioned.post(f"/v2/models/{name}.encoder/infer", json=v2_body()).json()
    assert v2["model_version"] == str(default)
    np.testing.assert_allclose(
        np.asarray(v2["outputs"][0]["data"], np.float32).reshape(X.shape), expected, rtol=0, atol=TOLERANCE
    )
    metadata = versioned.get(f"/v2/models/{name}.encoder").json()
    ready_versions = [v["version"] for v in versioned.get(f"/v1/models/{name}/versions").json()["versions"]]
    assert metadata["versions"] == ready_versions
    assert versioned.get(f"/v2/models/{name}.encoder/versions/{default}").json()["versions"] == ready_versions


def test_the_short_route_uses_its_models_default_version(versioned: TestClient, repository: Path) -> None:
    answer = versioned.post("/v1/encode", json={"inputs": X.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model"] == "every" and answer.headers["x-model-version"] == "2"
    np.testing.assert_allclose(
        np.asarray(answer.json()["latent"], np.float32), direct(repository, "every", 2), rtol=0, atol=TOLERANCE
    )


def test_dense_versions_run_their_own_graphs(versioned: TestClient, repository: Path) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (3, 784)).astype(np.float32)
    expected = direct(repository, "dense", 2, x)
    answer = versioned.post("/v1/models/dense/versions/2/encode", json={"inputs": x.tolist()})
    assert answer.headers["x-model-version"] == "2"
    np.testing.assert_allclose(np.asarray(answer.json()["latent"], np.float32), expected, rtol=0, atol=TOLERANCE)
    full = versioned.post("/v2/models/dense/infer", json=v2_body(x)).json()  # the bare name: the full graph
    assert full["model_name"] == "dense" and full["model_version"] == "2"
    reconstruction = direct(repository, "dense", 2, x, graph="full")
    got = next(o for o in full["outputs"] if o["name"] == "reconstruction")
    np.testing.assert_allclose(
        np.asarray(got["data"], np.float32).reshape(reconstruction.shape), reconstruction, rtol=0, atol=TOLERANCE
    )


@pytest.mark.parametrize("version", ["2", "7", "0", "abc", "1.0", "01"])
def test_unknown_versions_are_404_in_each_protocols_shape(versioned: TestClient, version: str) -> None:
    """`latest` serves version 3 only: 2 is on disk but outside the policy, the others do not exist."""
    error = assert_error(
        versioned.post(f"/v1/models/latest/versions/{version}/encode", json={"inputs": X.tolist()}),
        404,
        "model_not_found",
    )
    assert error["details"]["versions"] == ["3"]
    assert_error(versioned.get(f"/v1/models/latest/versions/{version}"), 404, "model_not_found")
    for path in ("", "/ready", "/config", "/stats"):
        answer = versioned.get(f"/v2/models/latest.encoder/versions/{version}{path}")
        assert answer.status_code == 404 and "has no version" in answer.json()["error"], answer.text
        assert set(answer.json()) == {"error"}
    infer = versioned.post(f"/v2/models/latest.encoder/versions/{version}/infer", json=v2_body())
    assert infer.status_code == 404 and set(infer.json()) == {"error"}
    assert_error(versioned.get("/v1/models/nope/versions"), 404, "model_not_found")


def test_describe_a_version(versioned: TestClient) -> None:
    detail = versioned.get("/v1/models/every/versions/1").json()
    assert detail["version"] == "1" and detail["default_version"] == "2" and detail["status"] == "ready"
    assert detail["description"] == "z = 1 x"
    assert detail["endpoints"] == {"encode": "/v1/models/every/versions/1/encode"}
    assert versioned.get("/v1/models/every").json()["endpoints"] == {"encode": "/v1/models/every/encode"}


def test_readiness_lists_every_version(versioned: TestClient) -> None:
    ready = versioned.get("/readyz").json()
    assert ready["ready"] is True
    every = ready["models"]["every"]
    assert every["default_version"] == "2"
    assert {v: s["status"] for v, s in every["versions"].items()} == {"1": "ready", "2": "ready"}
    mismatch = ready["models"]["mismatch"]["versions"]
    assert mismatch["2"]["status"] == "failed" and "card says version '5'" in mismatch["2"]["reason"]
    v2 = versioned.get("/v2/health/ready").json()
    assert v2["ready"] is True
    assert v2["models"]["pinned"] == {"1": "ready", "3": "ready"}
    assert v2["models"]["mismatch"] == {"1": "ready", "2": "failed"}


def test_metrics_carry_the_version(versioned: TestClient) -> None:
    versioned.post("/v1/models/every/versions/1/encode", json={"inputs": X.tolist()})
    versioned.post("/v2/models/every.encoder/infer", json=v2_body())
    versioned.post("/v1/models/every/versions/9/encode", json={"inputs": X.tolist()})
    text = versioned.get("/metrics").text
    route = 'route="/v1/models/{name}/versions/{version}/encode"'
    assert f'ae_http_requests_total{{method="POST",model="every",{route},status="200",version="1"}}' in text
    assert f'ae_http_requests_total{{method="POST",model="every",{route},status="404",version=""}}' in text
    v2_route = 'route="/v2/models/{name}/infer"'
    assert f'ae_http_requests_total{{method="POST",model="every",{v2_route},status="200",version="2"}}' in text
    assert 'ae_inference_batch_size_count{endpoint="encode",graph="encoder",model="every",version="1"}' in text
    assert 'ae_inference_batch_size_count{endpoint="v2",graph="encoder",model="every",version="2"}' in text
    assert 'ae_model_ready{model="mismatch",version="2"} 0.0' in text
    assert 'ae_model_ready{model="mismatch",version="1"} 1.0' in text
    assert 'ae_model_ready{model="latest",version="3"} 1.0' in text
    assert 'model="latest",version="1"' not in text  # outside the policy: never loaded


def test_versions_never_share_a_queue(versioned: TestClient) -> None:
    """Requests to two versions of one graph are never merged into one batch (each its own session)."""
    for version in (1, 2):
        assert versioned.post(f"/v1/models/every/versions/{version}/encode", json={"inputs": X.tolist()}).is_success
    engine = versioned.app.state.context.engine  # type: ignore[attr-defined]
    keys = {key for key in engine._queues if key[0] == "every"}
    assert keys == {("every", 1, "encoder"), ("every", 2, "encoder")}


# -- models directories that do not serve ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "reason", "serves"),
    [
        ("{not json", "versions.json is not valid JSON", False),
        ('{"policy": "newest"}', "'policy' must be", False),
        ('{"policy": {"latest": 1}, "default": 1}', "default version 1 is not one the policy serves (2)", False),
        # A listed version that is not on disk fails alone: version 1 still serves (and is the default).
        ('{"policy": {"specific": [1, 4]}}', "lists version 4, which has no folder with a card", True),
    ],
)
def test_a_malformed_versions_file_fails_the_model_with_its_reason(
    tmp_path: Path, content: str, reason: str, serves: bool
) -> None:
    root = tmp_path / "models"
    write_scale(root, "bad", 1, flat=True)
    write_scale(root, "bad", 2)
    (root / "bad" / "versions.json").write_text(content)
    write_scale(root, "good", 1, flat=True)
    with make_client(models_dir=root) as client:
        states = client.get("/v1/models/bad/versions").json()["versions"]
        failed = [s for s in states if s["status"] == "failed"]
        assert failed and all(reason in s["reason"] for s in failed), states
        ready = client.get("/readyz")
        assert client.post("/v1/models/good/encode", json={"inputs": X.tolist()}).status_code == 200
        if serves:
            assert ready.status_code == 200 and client.get("/v2/health/ready").status_code == 200
            answer = client.post("/v1/models/bad/encode", json={"inputs": X.tolist()})
            assert answer.headers["x-model-version"] == "1"
        else:
            assert ready.status_code == 503 and reason in ready.json()["not_ready"]["bad"]
            assert client.get("/v2/health/ready").status_code == 503
            error = assert_error(client.post("/v1/models/bad/encode", json={"inputs": X.tolist()}), 503)
            assert reason in error["message"]


def test_a_flat_card_and_a_1_folder_are_one_version_twice(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scale(root, "twice", 1, flat=True)
    write_scale(root, "twice", 1)
    with make_client(models_dir=root) as client:
        (state,) = client.get("/v1/models/twice/versions").json()["versions"]
        assert state["status"] == "failed" and "keep one" in state["reason"]


def test_never_ready_with_no_models(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "not-a-model").mkdir()  # a folder without a card is no model
    with make_client(models_dir=root) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "no model cards" in ready.json()["not_ready"]["*"] and ready.json()["models"] == {}
        v2 = client.get("/v2/health/ready")
        assert v2.status_code == 503 and "no model cards" in v2.json()["error"]


# -- a real server ------------------------------------------------------------------------------------------------
def test_live_server_names_versions_and_exposes_the_header_to_cors(repository: Path, tmp_path: Path) -> None:
    env = {"AE_CORS_ORIGINS": "https://app.example"}
    with (
        running(repository, tmp_path / "server.log", env) as server,
        httpx.Client(base_url=server.base, timeout=30) as http,
    ):
        for version in (1, 2):
            answer = http.post(
                f"/v1/models/every/versions/{version}/encode",
                json={"inputs": X.tolist()},
                headers={"Origin": "https://app.example"},
            )
            assert answer.status_code == 200 and answer.headers["x-model-version"] == str(version)
            exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
            assert {"x-model", "x-model-version"} <= exposed
            np.testing.assert_allclose(
                np.asarray(answer.json()["latent"], np.float32), version * X, rtol=0, atol=TOLERANCE
            )
            v2 = http.post(f"/v2/models/every.encoder/versions/{version}/infer", json=v2_body()).json()
            assert v2["model_version"] == str(version)
            np.testing.assert_allclose(
                np.asarray(v2["outputs"][0]["data"], np.float32).reshape(X.shape), version * X, atol=TOLERANCE
            )
        assert http.post("/v1/models/every/versions/3/encode", json={"inputs": X.tolist()}).status_code == 404
        assert http.post("/v2/models/every/versions/3/infer", json=v2_body()).status_code == 404
        assert http.get("/readyz").json()["models"]["two"]["default_version"] == "3"
