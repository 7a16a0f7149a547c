"""Kubernetes and KServe manifests, checked without a cluster: they parse, they hang together (selectors, names,
ports), and every probe path, port and AE_* variable they use is one the service really has."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.conftest import Dockerfile, load_manifests, route_exists, settings_from

K8S = load_manifests("k8s")
KSERVE = load_manifests("kserve")


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment; values from secrets count as set (a placeholder) for the name check."""
    return {e["name"]: e.get("value", "<from secret>" if "valueFrom" in e else None) for e in container["env"]}


def image_port(dockerfile: Dockerfile) -> int:
    command = json.loads(dockerfile.stage("serve").all("CMD")[-1].args)
    return int(command[command.index("--port") + 1])


def test_kinds() -> None:
    assert sorted(d["kind"] for d in K8S) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    assert [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in KSERVE] == [
        ("serving.kserve.io/v1beta1", "InferenceService", "ae-serve-grpc"),  # inferenceservice-grpc.yaml
        ("serving.kserve.io/v1beta1", "InferenceService", "ae-serve"),  # inferenceservice.yaml (HTTP)
    ]


def kserve(name: str) -> dict[str, Any]:
    (service,) = [d for d in KSERVE if d["kind"] == "InferenceService" and d["metadata"]["name"] == name]
    return service


LOADED_BYTES = 256 * 1024**2  # one worker with every committed model loaded, idle (README.md, "Kubernetes")


def test_deployment(dockerfile: Dockerfile, routes: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = only(K8S, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port, _grpc = container["ports"]  # the gRPC port: test_deployment_serves_grpc_on_its_named_port
    assert port["containerPort"] == image_port(dockerfile) and port["name"] == "http"
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes["liveness"]["path"] == "/healthz" and probes["readiness"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["port"] == "http", kind
        assert route_exists(routes, probe["path"]), f"{kind} probe: the app has no route {probe['path']}"
    settings = settings_from(env_of(container), monkeypatch)
    assert settings.workers == 1
    assert pod["terminationGracePeriodSeconds"] > settings.graceful_timeout_seconds
    # Draining must outlast the readiness probe's detection time, so no new requests arrive as the listener closes.
    readiness = container["readinessProbe"]
    assert settings.drain_seconds >= readiness["periodSeconds"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"
    assert resources["requests"]["memory"] == "1536Mi" and resources["limits"]["memory"] == "3Gi"
    # The limit holds what one worker has loaded (~0.25 GiB measured) plus everything its memory budgets let
    # requests hold; photographs of the default size (24 Mi pixels) are admitted, not pinned to 1 MP.
    budgets = (
        settings.request_memory_budget_bytes
        + settings.image_memory_budget_bytes
        + settings.inference_memory_budget_bytes
    )
    assert LOADED_BYTES + budgets <= 3 * 1024**3
    assert settings.max_image_pixels >= 24 * 1000 * 1000
    user = pod["securityContext"]
    serve_user = dockerfile.stage("serve").all("USER")[-1].args
    assert user["runAsNonRoot"] is True and f"{user['runAsUser']}:{user['runAsGroup']}" == serve_user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]


def test_service_hpa_and_budget_select_the_deployment() -> None:
    deployment = only(K8S, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = only(K8S, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    http, grpc = service["spec"]["ports"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
    assert http["targetPort"] == "http" and grpc["targetPort"] == "grpc"
    assert grpc["port"] == container_ports["grpc"] == 8001 and grpc["appProtocol"] == "kubernetes.io/h2c"
    hpa = only(K8S, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    budget = only(K8S, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain could never evict a pod"


def test_kserve_custom_v2_predictor(dockerfile: Dockerfile, routes: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    service = kserve("ae-serve")
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    command = container["command"] + container["args"]
    assert command[:3] == ["python", "-m", "app"]
    port = int(command[command.index("--port") + 1])
    assert container["ports"] == [{"containerPort": port, "protocol": "TCP"}]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness == {"path": "/v2/health/ready", "port": port}
    assert liveness == {"path": "/v2/health/live", "port": port}
    for path in (readiness["path"], liveness["path"], "/v2/models/dense/infer", "/v2/models/dense.encoder/infer"):
        assert route_exists(routes, path), f"the app has no route for {path}"
    settings = settings_from(env_of(container), monkeypatch)
    assert service["spec"]["predictor"]["timeout"] > settings.inference_timeout_seconds


def test_deployment_serves_grpc_on_its_named_port(monkeypatch: pytest.MonkeyPatch) -> None:
    (container,) = only(K8S, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_from(env_of(container), monkeypatch)
    assert ports["grpc"] == settings.grpc_port == 8001


def test_kserve_grpc_predictor(dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gRPC InferenceService: its one routed port is named h2c and is the service's --grpc-port; the probes
    use the standard gRPC health service on it; the rest as the HTTP one."""
    service = kserve("ae-serve-grpc")
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    command = container["command"] + container["args"]
    assert command[:3] == ["python", "-m", "app"] and command[command.index("--host") + 1] == "0.0.0.0"
    grpc_port = int(command[command.index("--grpc-port") + 1])
    assert grpc_port != int(command[command.index("--port") + 1])
    assert container["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port, "service": "inference.GRPCInferenceService"}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port}
    settings = settings_from(env_of(container), monkeypatch)
    assert service["spec"]["predictor"]["timeout"] > settings.inference_timeout_seconds
    assert settings.workers == 1
    http = kserve("ae-serve")["spec"]["predictor"]["containers"][0]
    assert container["image"] == http["image"] and container["resources"] == http["resources"]
