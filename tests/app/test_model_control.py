"""Model control at run time (app/core/control.py; the routes in app/api/v1/control.py and
app/api/v2/repository.py): the modes of `AE_MODEL_CONTROL`, load / unload / promote on `/v1` and through Triton's
repository extension (tritonclient, unmodified), the API key, the repository poll with published, half-written,
tampered and mislabelled folders, a restart, and 20 load / promote / unload cycles on a real server under load.

Models are real: tiny graphs whose version k computes z = k x (the helpers of test_versions.py), and the exported
`dense` and `dense-shallow` placed as versions 1 and 2 of one model. Every answer is compared with the output of
the version it names."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from .conftest import MODELS_DIR, TOLERANCE, assert_error, make_client
from .live import LiveServer, running
from .test_versions import X, v2_body, write_policy, write_scale
from .tiny_models import write_encoder_model

EXPLICIT = {"AE_MODEL_CONTROL": "explicit", "AE_LOG_LEVEL": "info"}


def encode(client: TestClient | httpx.Client, name: str, version: int | None = None) -> httpx.Response:
    path = f"/v1/models/{name}/encode" if version is None else f"/v1/models/{name}/versions/{version}/encode"
    return client.post(path, json={"inputs": X.tolist()})


def assert_serves(client: TestClient | httpx.Client, name: str, version: int, explicit: bool = False) -> None:
    """`/v1` and `/v2` answer with version `version` of a scale model (z = version x), and say so."""
    answer = encode(client, name, version if explicit else None)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == str(version) and answer.json()["model_version"] == str(version)
    np.testing.assert_allclose(np.asarray(answer.json()["latent"], np.float32), version * X, atol=TOLERANCE)
    path = f"/v2/models/{name}.encoder" + (f"/versions/{version}" if explicit else "") + "/infer"
    v2 = client.post(path, json=v2_body())
    assert v2.status_code == 200, v2.text
    assert v2.json()["model_version"] == str(version)
    data = np.asarray(v2.json()["outputs"][0]["data"], np.float32).reshape(X.shape)
    np.testing.assert_allclose(data, version * X, atol=TOLERANCE)


def states(client: TestClient | httpx.Client, name: str) -> dict[str, str]:
    return {v["version"]: v["status"] for v in client.get(f"/v1/models/{name}/versions").json()["versions"]}


def index(client: TestClient | httpx.Client, **body: Any) -> dict[tuple[str, str], tuple[str, str]]:
    answer = client.post("/v2/repository/index", json=body) if body else client.post("/v2/repository/index")
    assert answer.status_code == 200, answer.text
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in answer.json()}


def scale_repository(root: Path) -> Path:
    """`m`: versions 1 (flat), 2 and 3 on disk, only 1 selected; `other`: one version (keeps the replica ready)."""
    write_scale(root, "m", 1, flat=True)
    write_scale(root, "m", 2)
    write_scale(root, "m", 3)
    write_policy(root, "m", {"policy": {"specific": [1]}})
    write_scale(root, "other", 1, flat=True)
    return root


@pytest.fixture
def explicit(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(models_dir=scale_repository(tmp_path / "models"), model_control="explicit") as client:
        yield client


# -- modes ---------------------------------------------------------------------------------------------------------
def test_none_mode_answers_the_index_and_refuses_the_rest(tmp_path: Path) -> None:
    with make_client(models_dir=scale_repository(tmp_path / "models")) as client:
        assert index(client)[("m", "1")] == ("READY", "")
        for action in ("load", "unload"):
            refused = client.post(f"/v2/repository/models/m/{action}")
            assert refused.status_code == 403 and "AE_MODEL_CONTROL=none" in refused.json()["error"]
        for action in ("load", "unload", "promote"):
            error = assert_error(client.post(f"/v1/models/m/versions/1/{action}"), 403, "model_control_disabled")
            assert "AE_MODEL_CONTROL=explicit or poll" in error["message"]
        assert_serves(client, "m", 1)


def test_several_workers_are_refused_with_409() -> None:
    """The API would act on the one worker that answers: refused, with what to do instead."""
    with make_client(model_control="explicit", workers=2) as client:
        refused = client.post("/v2/repository/models/dense/load")
        assert refused.status_code == 409 and "2 worker processes" in refused.json()["error"]
        for action in ("load", "unload", "promote"):
            error = assert_error(client.post(f"/v1/models/dense/versions/1/{action}"), 409, "several_workers")
            assert "AE_MODEL_CONTROL=poll" in error["message"] and error["details"] == {"workers": 2}
        assert client.post("/v2/repository/index").status_code == 200  # reading is fine
        assert client.get("/v1/models/dense").json()["status"] == "ready"


# -- explicit control on /v1 and /v2 -------------------------------------------------------------------------------
def test_load_promote_unload_on_v1_and_the_routes_follow(explicit: TestClient) -> None:
    client = explicit
    assert states(client, "m") == {"1": "ready"}
    assert index(client)[("m", "2")] == ("UNAVAILABLE", "not loaded: outside the version policy (versions.json)")

    loaded = client.post("/v1/models/m/versions/2/load")
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["action"] == "load" and body["version"] == "2" and body["loaded"] is True
    assert body["default_version"] == "2"  # the highest serving one: nothing pins the default
    assert [(v["version"], v["status"]) for v in body["versions"]] == [("1", "ready"), ("2", "ready")]
    assert_serves(client, "m", 2)
    assert_serves(client, "m", 1, explicit=True)
    assert client.get("/v2/models/m.encoder").json()["versions"] == ["1", "2"]

    promoted = client.post("/v1/models/m/versions/1/promote")
    assert promoted.status_code == 200 and promoted.json()["default_version"] == "1"
    assert_serves(client, "m", 1)
    assert_serves(client, "m", 2, explicit=True)
    assert client.get("/readyz").json()["models"]["m"]["default_version"] == "1"

    # Unloading the default falls back to the highest version that serves.
    unloaded = client.post("/v1/models/m/versions/1/unload").json()
    assert unloaded["loaded"] is True and unloaded["default_version"] == "2"
    assert_serves(client, "m", 2)
    assert_error(encode(client, "m", 1), 404, "model_not_found")
    assert client.post("/v2/models/m.encoder/versions/1/infer", json=v2_body()).status_code == 404
    assert client.get("/v2/models/m.encoder/versions/1/ready").status_code == 404
    assert index(client)[("m", "1")] == ("UNAVAILABLE", "unloaded")
    metrics = client.get("/metrics").text
    assert 'ae_model_ready{model="m",version="1"}' not in metrics
    assert 'ae_model_ready{model="m",version="2"} 1.0' in metrics

    # Promote needs a loaded version.
    assert_error(client.post("/v1/models/m/versions/3/promote"), 409, "model_not_loaded")
    assert_error(client.post("/v1/models/m/versions/7/promote"), 404, "model_not_found")

    # The last version unloaded: the model is gone, and no longer required for readiness.
    gone = client.post("/v1/models/m/versions/2/unload").json()
    assert gone == {
        "name": "m", "action": "unload", "version": "2", "loaded": False, "default_version": None, "versions": [],
    }  # fmt: skip
    assert_error(encode(client, "m"), 404, "model_not_found")
    assert client.post("/v2/models/m/infer", json=v2_body()).status_code == 404
    assert "m" not in [model["name"] for model in client.get("/v1/models").json()["models"]]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["required"] == ["other"], ready.text
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post("/v1/models/m/versions/2/unload").status_code == 200  # not loaded: nothing to do

    # Loaded again (a version the policy does not select): it serves and is required again.
    assert client.post("/v1/models/m/versions/3/load").json()["default_version"] == "3"
    assert_serves(client, "m", 3)
    assert client.get("/readyz").json()["required"] == ["other", "m"]
    assert index(client)[("m", "3")] == ("READY", "")
    assert index(client, ready=True).keys() == {("m", "3"), ("other", "1")}
    engine = client.app.state.context.engine  # type: ignore[attr-defined]
    assert {key for key in engine._queues if key[0] == "m"} == {("m", 3, "encoder")}  # the others were retired


def test_v2_load_brings_the_model_back_to_its_folder(explicit: TestClient, tmp_path: Path) -> None:
    """A model load reads the folder anew: versions.json selects, a promotion is forgotten, versions no longer
    selected are unloaded; a graph's V2 name stands for its model."""
    client = explicit
    assert client.post("/v1/models/m/versions/3/load").status_code == 200
    assert client.post("/v1/models/m/versions/1/promote").json()["default_version"] == "1"
    write_policy(tmp_path / "models", "m", {"policy": {"latest": {"num_versions": 2}}})
    answer = client.post("/v2/repository/models/m.encoder/load", json={})
    assert answer.status_code == 200 and answer.content == b""
    assert states(client, "m") == {"2": "ready", "3": "ready"}
    assert_serves(client, "m", 3)
    assert client.post("/v2/repository/models/m/unload", json={"parameters": {"unload_dependents": False}}).is_success
    assert client.get("/v2/models/m/ready").status_code == 404
    listed = index(client)
    assert [listed[("m", str(v))] for v in (1, 2, 3)] == [
        ("UNAVAILABLE", "not loaded"),  # the model load above left it out (latest 2)
        ("UNAVAILABLE", "unloaded"),
        ("UNAVAILABLE", "unloaded"),
    ]
    assert client.post("/v2/repository/models/m/load").status_code == 200
    assert_serves(client, "m", 3)


def test_a_refused_reload_leaves_the_old_copy_serving(explicit: TestClient, tmp_path: Path) -> None:
    """A tampered file, and a card that disagrees with its folder: refused with the reason (answer, index,
    /readyz), while the copy loaded before keeps serving and the replica stays ready."""
    client = explicit
    root = tmp_path / "models"
    assert client.post("/v1/models/m/versions/2/load").status_code == 200
    graph = root / "m" / "2" / "encoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")  # what a half-copied or tampered file looks like
    error = assert_error(client.post("/v1/models/m/versions/2/load"), 422, "model_load_failed")
    assert "encoder.onnx is" in error["message"] and "still serves" in error["message"]
    assert_serves(client, "m", 2)
    version = {v["version"]: v for v in client.get("/v1/models/m/versions").json()["versions"]}["2"]
    assert version["status"] == "ready" and "refused" in version["reason"] and "bytes" in version["reason"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "refused" in ready.json()["models"]["m"]["versions"]["2"]["reason"]
    state, reason = index(client)[("m", "2")]
    assert state == "READY" and "card says" in reason

    card = json.loads((root / "m" / "3" / "card.json").read_text())
    (root / "m" / "3" / "card.json").write_text(json.dumps({**card, "version": "5"}))
    v2 = client.post("/v2/repository/models/m/load", json={})
    assert v2.status_code == 200  # versions.json selects 1 only: 3 is not part of the model load
    error = assert_error(client.post("/v1/models/m/versions/3/load"), 422, "model_load_failed")
    assert "the card says version '5', but it sits in m/3/ (version 3)" in error["message"]
    assert index(client)[("m", "3")][0] == "UNAVAILABLE"
    assert_serves(client, "m", 1)
    assert client.get("/readyz").status_code == 200

    (root / "m" / "versions.json").write_text('{"policy": "newest"}')  # a malformed policy: refused too
    refused = client.post("/v2/repository/models/m/load")
    assert refused.status_code == 422 and "'policy' must be" in refused.json()["error"], refused.text
    assert_serves(client, "m", 1)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert "versions.json was refused" in ready.json()["models"]["m"]["versions"]["1"]["reason"]
    assert "'policy' must be" in client.get("/v1/models/m/versions").json()["problem"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("post", "/v1/models/nope/versions/1/load", None, 404, "no model named 'nope'"),
        ("post", "/v1/models/nope/versions/1/promote", None, 404, "no model named 'nope'"),
        ("post", "/v1/models/m/versions/9/load", None, 404, "has no version 9 in the repository"),
        ("post", "/v1/models/m/versions/9/unload", None, 404, "has no version 9"),
        ("post", "/v1/models/m/versions/abc/load", None, 404, "versions are positive integers"),
        ("post", "/v1/models/m/versions/01/unload", None, 404, "versions are positive integers"),
        ("post", "/v1/models/m/versions/0/promote", None, 404, "versions are positive integers"),
        ("post", "/v1/models/m/versions/1.5/load", None, 404, "versions are positive integers"),
        ("post", "/v1/models/.../versions/1/load", None, 404, "no model named '...'"),
        ("post", "/v2/repository/models/nope/load", None, 404, "no model named 'nope'"),
        ("post", "/v2/repository/models/nope/unload", b"{}", 404, "no model named 'nope'"),
        ("post", "/v2/repository/models/m/load", b"{not json", 400, "not valid JSON"),
        ("post", "/v2/repository/models/m/unload", b"\xff\xfe", 400, "not valid JSON"),
        ("post", "/v2/repository/index", b"[1, 2]", 400, "not a RepositoryIndexRequest"),
        ("post", "/v2/repository/index", b'{"ready": "maybe"}', 400, "ready"),
        ("post", "/v2/repository/index", b"ready", 400, "not valid JSON"),
        ("post", "/v2/repository/models/m/load", b'{"parameters": {"config": "{}"}}', 400, "not supported"),
        ("post", "/v2/repository/models/m/load", b'{"parameters": {"file:1/a.onnx": "AA=="}}', 400, "not supported"),
        ("post", "/v2/repository/models/m/load", b'{"parameters": 3}', 400, "parameters"),
        ("get", "/v2/repository/models/m/load", None, 405, "not allowed"),
    ],
)  # fmt: skip
def test_malformed_control_requests_are_clear_4xx(
    explicit: TestClient, method: str, path: str, body: bytes | None, status: int, words: str
) -> None:
    answer = client_call(explicit, method, path, body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"] if path.startswith("/v2") else assert_error(answer, status)["message"]
    assert words in message, message
    assert_serves(explicit, "m", 1)  # nothing changed


def client_call(client: TestClient, method: str, path: str, body: bytes | None) -> httpx.Response:
    if method == "get":
        return client.get(path)
    return client.post(path, content=body) if body is not None else client.post(path)


def test_an_incomplete_version_folder_is_named(explicit: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "m" / "4"
    folder.mkdir()
    error = assert_error(explicit.post("/v1/models/m/versions/4/load"), 422, "model_load_failed")
    assert "m/4/ has no card.json" in error["message"] and ".tmp-4" in error["message"]
    assert index(explicit)[("m", "4")][1].startswith("m/4/ has no card.json")


def test_the_api_key_guards_every_call_that_changes_what_serves(tmp_path: Path) -> None:
    """Even when the exemptions cover the whole API, load, unload and promote need the key."""
    root = scale_repository(tmp_path / "models")
    exempt = ["/healthz", "/readyz", "/v1/*", "/v2/*"]
    with make_client(
        models_dir=root, model_control="explicit", api_key="s3cret", api_key_exempt_paths=exempt
    ) as client:
        for path in (
            "/v1/models/m/versions/2/load",
            "/v1/models/m/versions/1/promote",
            "/v1/models/m/versions/1/unload",
        ):
            assert_error(client.post(path), 401, "unauthorized")
            assert_error(client.post(path, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        for path in ("/v2/repository/models/m/load", "/v2/repository/models/m/unload"):
            refused = client.post(path)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/v2/repository/index").status_code == 200  # exempt: it changes nothing
        assert_serves(client, "m", 1)  # exempt too
        key = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/models/m/versions/2/load", headers=key).status_code == 200
        assert client.post("/v1/models/m/versions/1/promote", headers=key).json()["default_version"] == "1"
        assert client.post("/v2/repository/models/m/unload", headers=key).status_code == 200
        assert client.post("/v2/repository/models/m/load", headers=key).status_code == 200


def test_openapi_documents_the_control_routes(explicit: TestClient) -> None:
    spec = explicit.get("/openapi.json").json()
    paths = spec["paths"]
    for action in ("load", "unload", "promote"):
        operation = paths[f"/v1/models/{{name}}/versions/{{version}}/{action}"]["post"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ModelControlResponse"
        )
        assert {"403", "404", "409"} <= set(operation["responses"])
    index_operation = paths["/v2/repository/index"]["post"]
    assert "requestBody" in index_operation and "RepositoryIndexResponse" in json.dumps(index_operation)
    for action in ("load", "unload"):
        assert {"400", "403", "404", "409"} <= set(
            paths[f"/v2/repository/models/{{name}}/{action}"]["post"]["responses"]
        )
    assert "model_repository" in explicit.get("/v2").json()["extensions"]


# -- a real server -------------------------------------------------------------------------------------------------
def test_tritonclient_repository_calls(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scale(root, "t", 1, flat=True)
    write_scale(root, "t", 2)
    write_scale(root, "other", 1, flat=True)
    with (
        running(root, tmp_path / "server.log", EXPLICIT) as server,
        triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60) as client,
    ):
        entries = client.get_model_repository_index()
        assert {"name": "t", "version": "2", "state": "READY", "reason": ""} in entries
        first = next(e for e in entries if e["name"] == "t" and e["version"] == "1")
        assert first["state"] == "UNAVAILABLE" and "outside the version policy" in first["reason"]
        assert "model_repository" in client.get_server_metadata()["extensions"]

        client.unload_model("t")
        assert not client.is_model_ready("t.encoder")
        assert client.is_server_ready()  # `t` is no longer required
        assert {"name": "t", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"} in (
            client.get_model_repository_index()
        )
        client.load_model("t")
        assert client.is_model_ready("t.encoder") and client.is_model_ready("t.encoder", "2")
        client.load_model("t.encoder")  # a graph's name stands for its model: a reload

        write_policy(root, "t", {"policy": "all"})
        client.load_model("t")
        for version in (1, 2):
            tensor = triton.InferInput("x", list(X.shape), "FP32")
            tensor.set_data_from_numpy(X)
            result = client.infer("t.encoder", [tensor], model_version=str(version))
            np.testing.assert_allclose(result.as_numpy("z"), version * X, atol=TOLERANCE)
        assert client.get_model_metadata("t.encoder")["versions"] == ["1", "2"]

        graph = root / "t" / "2" / "encoder.onnx"
        graph.write_bytes(graph.read_bytes()[:-1] + b"\1")  # same size, other bytes: the sha256 tells
        with pytest.raises(InferenceServerException, match=r"sha256 of encoder\.onnx is"):
            client.load_model("t")
        assert client.is_model_ready("t.encoder", "2")  # the loaded copy still serves
        with httpx.Client(base_url=server.base) as http:
            assert_serves(http, "t", 2)
        with pytest.raises(InferenceServerException, match="no model named 'nope'"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="not supported"):
            client.load_model("t", config="{}")
    assert '"message":"model control: load"' in server.log()


def test_a_restart_honours_versions_json(tmp_path: Path) -> None:
    """A promotion lives in memory: after a restart the default is versions.json's again."""
    root = tmp_path / "models"
    write_scale(root, "r", 1, flat=True)
    write_scale(root, "r", 2)
    write_scale(root, "r", 3)
    write_policy(root, "r", {"policy": "all", "default": 1})
    with running(root, tmp_path / "first.log", EXPLICIT) as server, httpx.Client(base_url=server.base) as http:
        assert_serves(http, "r", 1)
        assert http.post("/v1/models/r/versions/3/promote").json()["default_version"] == "3"
        assert_serves(http, "r", 3)
        assert http.post("/v1/models/r/versions/2/unload").status_code == 200
    with running(root, tmp_path / "second.log", EXPLICIT) as server, httpx.Client(base_url=server.base) as http:
        assert states(http, "r") == {"1": "ready", "2": "ready", "3": "ready"}
        assert_serves(http, "r", 1)
        assert http.get("/readyz").json()["models"]["r"]["default_version"] == "1"


def write_slow_model(folder: Path, name: str, version: int) -> None:
    """A [batch, 4] -> [batch, 4] graph through two 1536 x 1536 layers: light per request (5 M multiply-adds), but
    measuring its working memory at its first load (8,192 rows at once, 39 G) takes seconds: a load to watch."""
    rng = np.random.default_rng(version)
    weights = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.01).astype(np.float32), f"w{i}")
        for i, shape in enumerate([(4, 1536), (1536, 1536), (1536, 1536), (1536, 4)])
    ]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(3)]
    nodes.append(helper.make_node("MatMul", ["h3", "w3"], ["z"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    write_encoder_model(folder, graph, "slow to measure", [0.0, 1.0], name=name, version=str(version))


def test_serving_continues_while_a_version_loads(tmp_path: Path) -> None:
    """The load (verify, open, warm up, measure) runs in a thread: during it the index says LOADING and requests
    to the served version keep being answered; a client that gives up does not stop it."""
    root = tmp_path / "models"
    write_scale(root, "s", 1, flat=True)
    write_slow_model(root / "s" / "2", "s", 2)
    write_slow_model(root / "s" / "3", "s", 3)
    write_policy(root, "s", {"policy": {"specific": [1]}})
    with running(root, tmp_path / "server.log", EXPLICIT) as server, httpx.Client(base_url=server.base) as http:
        outcome: dict[str, Any] = {}

        def load() -> None:
            outcome["answer"] = httpx.post(f"{server.base}/v1/models/s/versions/2/load", timeout=120)

        loader = threading.Thread(target=load)
        loader.start()
        during, seen_loading = [], False
        while loader.is_alive():
            if index(http).get(("s", "2"), ("", ""))[0] == "LOADING":
                seen_loading = True
                started = time.perf_counter()
                assert_serves(http, "s", 1, explicit=True)  # explicit: 2 may become the default meanwhile
                during.append(time.perf_counter() - started)
            time.sleep(0.01)
        loader.join()
        assert outcome["answer"].status_code == 200, outcome["answer"].text
        assert seen_loading and during, "the load was over before it could be watched"
        assert max(during) < 2.0, during  # answered while loading (the event loop was free)
        assert http.post("/v1/models/s/versions/2/encode", json={"inputs": X.tolist()}).status_code == 200

        # A client that gives up (its connection closed, its request cancelled) does not abandon the load.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/models/s/versions/3/load", timeout=0.3)
        wait_until(lambda: index(http)[("s", "3")][0] == "READY", "the load finished without its client")
        assert http.post("/v1/models/s/versions/3/encode", json={"inputs": X.tolist()}).status_code == 200


# -- the poll ------------------------------------------------------------------------------------------------------
POLL_SECONDS = 0.25
POLL = {"AE_MODEL_CONTROL": "poll", "AE_REPOSITORY_POLL_SECONDS": str(POLL_SECONDS), "AE_LOG_LEVEL": "info"}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    """Seconds until `check()` holds (fails after `timeout`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def default_version(http: httpx.Client, name: str) -> str | None:
    answer = http.get(f"/v1/models/{name}/versions")
    return answer.json()["default_version"] if answer.status_code == 200 else None


def write_scale_into(folder: Path, name: str, version: int, card_version: str | None = None) -> None:
    """Version `version` of scale model `name` (z = version x) written in `folder` (any folder name)."""
    factor = numpy_helper.from_array(np.array(float(version), dtype=np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["z"])],
        f"scale{version}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [factor],
    )
    write_encoder_model(folder, graph, f"z = {version} x", [0.0, 1.0], name=name, version=card_version or str(version))


def publish(root: Path, name: str, version: int, card_version: str | None = None) -> None:
    """As a publisher does: write the version in a hidden folder, then rename it to its number (atomic)."""
    staging = root / name / f".tmp-{version}"
    write_scale_into(staging, name, version, card_version)
    os.rename(staging, root / name / str(version))


def replace_file(path: Path, data: bytes) -> None:
    """Replace a file's content in one step (the poll never sees it half-written)."""
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(data)
    os.replace(staging, path)


def remove_folder(path: Path) -> None:
    """Take a folder out of the repository in one step (renamed hidden), then delete it."""
    hidden = path.with_name(f".removed-{path.name}")
    os.rename(path, hidden)
    shutil.rmtree(hidden)


def refusals(server: LiveServer, version: int, words: str) -> int:
    """Log lines refusing `version` with `words` in the reason."""
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return sum(
        1
        for line in lines
        if line.get("message") == "model failed to load" and line.get("version") == version
        and words in line.get("reason", "")
    )  # fmt: skip


def test_poll_picks_up_published_versions_and_refuses_broken_ones(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scale(root, "p", 1, flat=True)
    write_scale(root, "q", 1, flat=True)
    with running(root, tmp_path / "server.log", POLL) as server, httpx.Client(base_url=server.base) as http:
        assert_serves(http, "p", 1)

        # A version being written in a hidden folder is not looked at; once renamed it serves within the interval.
        write_scale_into(root / "p" / ".tmp-2", "p", 2)
        time.sleep(4 * POLL_SECONDS)
        assert default_version(http, "p") == "1" and ("p", "2") not in index(http)
        os.rename(root / "p" / ".tmp-2", root / "p" / "2")
        took = wait_until(lambda: default_version(http, "p") == "2", "version 2 picked up")
        assert took < POLL_SECONDS + 5.0, took
        assert_serves(http, "p", 2)
        wait_until(lambda: states(http, "p") == {"2": "ready"}, "version 1 unloaded (latest 1)")

        # Half-written (copied by hand, no dot-folder): a version folder without its card yet. Refused with the
        # reason in the index, /readyz and the log, while 2 serves on.
        (root / "p" / "3").mkdir()
        shutil.copy(root / "p" / "2" / "encoder.onnx", root / "p" / "3" / "encoder.onnx")
        wait_until(lambda: "3" in states(http, "p"), "the incomplete folder refused")
        state, reason = index(http)[("p", "3")]
        assert state == "UNAVAILABLE" and "p/3/ has no card.json" in reason
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert "has no card.json" in ready.json()["models"]["p"]["versions"]["3"]["reason"]
        assert_serves(http, "p", 2)

        # Then a card whose sha256 is not the graph's: refused once, and neither retried nor logged again while
        # the folder stays as it is.
        card = json.loads((root / "p" / "2" / "card.json").read_text())
        card["graphs"]["encoder"]["sha256"] = "0" * 64
        replace_file(root / "p" / "3" / "card.json", json.dumps({**card, "version": "3"}).encode())
        wait_until(lambda: "sha256" in index(http)[("p", "3")][1], "the sha256 refusal listed")
        logged = refusals(server, 3, "")
        time.sleep(8 * POLL_SECONDS)
        assert refusals(server, 3, "") == logged and refusals(server, 3, "sha256") == 1
        assert refusals(server, 3, "no card.json") >= 1
        assert default_version(http, "p") == "2" and http.get("/readyz").status_code == 200
        assert "sha256" in http.get("/readyz").json()["models"]["p"]["versions"]["3"]["reason"]
        error = http.post("/v1/models/p/versions/3/encode", json={"inputs": X.tolist()})
        assert error.status_code == 503 and "sha256" in error.json()["error"]["message"]

        # The publication done properly: picked up, and it replaces 2.
        remove_folder(root / "p" / "3")
        publish(root, "p", 3)
        wait_until(lambda: default_version(http, "p") == "3", "version 3 picked up")
        assert_serves(http, "p", 3)
        wait_until(lambda: states(http, "p") == {"3": "ready"}, "version 2 unloaded")

        # A card that disagrees with its folder number: refused, 3 serves on.
        publish(root, "p", 4, card_version="5")
        wait_until(lambda: "4" in states(http, "p"), "the mislabelled version refused")
        assert "the card says version '5', but it sits in p/4/ (version 4)" in index(http)[("p", "4")][1]
        assert_serves(http, "p", 3)

        # A file of the serving version tampered with: the reload is refused, the loaded copy serves on.
        graph = root / "p" / "3" / "encoder.onnx"
        replace_file(graph, graph.read_bytes() + b"\0")
        wait_until(lambda: "refused" in index(http)[("p", "3")][1], "the tampered reload refused")
        assert index(http)[("p", "3")][0] == "READY"
        assert_serves(http, "p", 3)
        time.sleep(4 * POLL_SECONDS)
        assert refusals(server, 3, "bytes, the card says") == 1

        # A removed version folder is unloaded; a new versions.json applies.
        remove_folder(root / "p" / "4")
        wait_until(lambda: "4" not in states(http, "p"), "the removed version dropped")
        replace_file(root / "p" / "versions.json", b'{"policy": "newest"}')  # malformed: refused, 3 serves on
        wait_until(lambda: http.get("/v1/models/p/versions").json()["problem"] is not None, "the policy refused")
        assert "'policy' must be" in http.get("/v1/models/p/versions").json()["problem"]
        assert_serves(http, "p", 3)
        assert http.get("/readyz").status_code == 200
        replace_file(root / "p" / "versions.json", b'{"policy": "all"}')
        wait_until(lambda: states(http, "p") == {"1": "ready", "2": "ready", "3": "ready"}, "policy all applied")
        assert http.get("/v1/models/p/versions").json()["problem"] is None
        assert_serves(http, "p", 3)
        assert_serves(http, "p", 1, explicit=True)

        # The model's folder removed: the model is unloaded and no longer required; published again, it serves.
        remove_folder(root / "p")
        wait_until(lambda: http.get("/v1/models/p").status_code == 404, "the removed model unloaded")
        assert http.get("/readyz").json()["required"] == ["q"] and http.get("/v2/health/ready").status_code == 200
        assert_serves(http, "q", 1)
        write_scale_into(root / ".tmp-p", "p", 1)
        os.rename(root / ".tmp-p", root / "p")
        wait_until(lambda: default_version(http, "p") == "1", "the republished model picked up")
        assert_serves(http, "p", 1)
        assert http.get("/readyz").json()["required"] == ["q", "p"]


# -- twenty cycles under load --------------------------------------------------------------------------------------
def copy_version(source: Path, folder: Path, name: str, version: int) -> None:
    """An exported model's graphs as version `version` of model `name`: the files copied, the card's name and
    version set, and each graph's size and sha256 recomputed from the copy, as the loader checks them."""
    folder.mkdir(parents=True)
    card = json.loads((source / "card.json").read_text())
    for graph in card["graphs"].values():
        data = (source / graph["file"]).read_bytes()
        (folder / graph["file"]).write_bytes(data)
        graph["sha256"], graph["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "card.json").write_text(json.dumps({**card, "name": name, "version": str(version)}))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Load:
    """Clients sending mixed `/v1` and `/v2` requests to a model's default version from `concurrency` connections,
    each answer checked against the direct output of the version it names."""

    def __init__(self, base: str, expected: dict[str, dict[str, np.ndarray]], rows: np.ndarray, concurrency: int):
        self.base = base
        self.expected = expected
        self.concurrency = concurrency
        self.bodies = {
            "v1": [json.dumps({"inputs": [row.tolist()]}).encode() for row in rows],
            "v2": [json.dumps(v2_body(row[None])).encode() for row in rows],
        }
        self.done = 0
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` more requests have been answered."""
        target = self.done + count
        deadline = time.monotonic() + timeout
        while self.done < target:
            assert time.monotonic() < deadline and self._thread.is_alive(), f"{self.done} answers, {target} wanted"
            time.sleep(0.005)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=60) as client:
            await asyncio.gather(*(self._client(client, number) for number in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, number: int) -> None:
        turn = number
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            row = turn % len(self.bodies["v1"])
            kind = ("v1", "v2-encoder", "v2-full")[turn % 3]
            turn += 1
            try:
                if kind == "v1":
                    answer = await client.post("/v1/models/ae/encode", content=self.bodies["v1"][row], headers=headers)
                else:
                    name = "ae.encoder" if kind == "v2-encoder" else "ae"
                    answer = await client.post(f"/v2/models/{name}/infer", content=self.bodies["v2"][row])
                problem, version = self._check(kind, row, answer)
            except Exception as exc:  # every failure is counted, whatever it is
                problem, version = f"{kind}: {type(exc).__name__}: {exc}", ""
            with self._lock:
                self.done += 1
                self.versions[version] += 1
                if problem:
                    self.failures.append(problem)

    def _check(self, kind: str, row: int, answer: httpx.Response) -> tuple[str | None, str]:
        if answer.status_code != 200:
            return f"{kind}: {answer.status_code} {answer.text[:300]}", ""
        body = answer.json()
        version = body["model_version"]
        if kind == "v1":
            if answer.headers["x-model-version"] != version:
                return f"v1: header {answer.headers['x-model-version']} vs body {version}", version
            got, want = np.asarray(body["latent"], np.float32)[0], self.expected[version]["latent"][row]
        elif kind == "v2-encoder":
            got, want = np.asarray(body["outputs"][0]["data"], np.float32), self.expected[version]["latent"][row]
        else:
            output = next(o for o in body["outputs"] if o["name"] == "reconstruction")
            got, want = np.asarray(output["data"], np.float32), self.expected[version]["reconstruction"][row]
        if not np.allclose(got, want, rtol=0, atol=TOLERANCE):
            return f"{kind}: version {version} answered {got[:3]}..., its graph gives {want[:3]}...", version
        return None, version


def direct_outputs(folder: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    def run(graph: str) -> list[np.ndarray]:
        session = ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        return list(session.run(None, {session.get_inputs()[0].name: rows}))

    return {"latent": run("encoder")[0], "reconstruction": run("full")[0]}


CYCLES = 20
REQUESTS_PER_STEP = 50


def test_twenty_load_promote_unload_cycles_under_load(tmp_path: Path) -> None:
    """`dense` as version 1 and `dense-shallow` as version 2 of `ae`; 32 clients send mixed /v1 and /v2 requests
    to the default version while each cycle loads the version not loaded, promotes it and unloads the other:
    no request fails, each answer is its version's output, and memory comes back after the unloads."""
    root = tmp_path / "models"
    copy_version(MODELS_DIR / "dense", root / "ae" / "1", "ae", 1)
    copy_version(MODELS_DIR / "dense-shallow", root / "ae" / "2", "ae", 2)
    write_policy(root, "ae", {"policy": {"specific": [1]}})
    rows = np.random.default_rng(7).uniform(0, 1, (8, 784)).astype(np.float32)
    expected = {str(v): direct_outputs(root / "ae" / str(v), rows) for v in (1, 2)}
    assert np.abs(expected["1"]["latent"] - expected["2"]["latent"]).max() > 0.1  # a mislabelled answer shows
    env = {**EXPLICIT, "AE_LOG_LEVEL": "warning", "AE_MALLOC_TRIM_SECONDS": "1"}
    with (
        running(root, tmp_path / "server.log", env) as server,
        httpx.Client(base_url=server.base, timeout=120) as control,
        Load(server.base, expected, rows, concurrency=32) as load,
    ):
        pid = server.process.pid
        rss: dict[str, int] = {"start": rss_bytes(pid)}
        current, started = 1, time.monotonic()
        for cycle in range(CYCLES):
            other = 3 - current
            for action, version in (("load", other), ("promote", other), ("unload", current)):
                load.wait_for(REQUESTS_PER_STEP)
                answer = control.post(f"/v1/models/ae/versions/{version}/{action}")
                assert answer.status_code == 200, f"cycle {cycle} {action} {version}: {answer.text}"
                # Loaded beside the default, a version becomes the default only if nothing was promoted yet.
                default = current if action == "load" and cycle > 0 else other
                assert answer.json()["default_version"] == str(default), (cycle, action, answer.json())
                if cycle == 0 and action == "load":
                    rss["after first load"] = rss_bytes(pid)
            current = other
            assert states(control, "ae") == {str(current): "ready"}
        rss["after last unload"] = rss_bytes(pid)
        load.wait_for(REQUESTS_PER_STEP)
        seconds = time.monotonic() - started
    print(
        f"\n{CYCLES} cycles in {seconds:.1f} s: {load.done} requests ({dict(load.versions)}), "
        f"{len(load.failures)} failed; RSS MiB " + ", ".join(f"{key} {value / 2**20:.1f}" for key, value in rss.items())
    )
    assert not load.failures, load.failures[:10]
    assert load.done >= 3 * CYCLES * REQUESTS_PER_STEP
    assert load.versions["1"] > 0 and load.versions["2"] > 0
    assert rss["after last unload"] <= 1.10 * rss["after first load"], rss
