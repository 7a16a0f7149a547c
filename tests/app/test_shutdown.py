"""Graceful shutdown of a real service process: SIGTERM drains (readiness 503, requests still served), then the
listener closes, the request in flight completes with 200, and the process exits 0 within the grace period."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.app.live import raw_request, read_response, start

VALID = json.dumps({"inputs": [[0.5] * 784]}).encode()
HEAD = f"POST /v1/encode HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: {len(VALID)}\n"


def one_model(models_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "dense", root / "dense")
    return root


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_drains_then_completes_in_flight_requests(models_dir: Path, tmp_path: Path) -> None:
    drain, grace = 2.0, 20.0
    env = {"AE_DRAIN_SECONDS": str(drain), "AE_GRACEFUL_TIMEOUT_SECONDS": str(grace), "AE_BODY_TIMEOUT_SECONDS": "60"}
    server = start(one_model(models_dir, tmp_path), tmp_path / "server.log", env)
    try:
        wait_ready(server.base)
        in_flight = raw_request(server.port, HEAD, VALID[:50])  # accepted, body still arriving
        time.sleep(0.2)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)

        # Draining: readiness says 503 (a load balancer stops routing here), everything else still serves.
        ready = httpx.get(f"{server.base}/readyz", timeout=5)
        assert ready.status_code == 503 and "draining" in ready.json()["not_ready"]["*"]
        v2_ready = httpx.get(f"{server.base}/v2/health/ready", timeout=5)
        assert v2_ready.status_code == 503 and "draining" in v2_ready.json()["error"]
        assert httpx.get(f"{server.base}/healthz", timeout=5).status_code == 200
        served = httpx.post(
            f"{server.base}/v1/encode", content=VALID, headers={"content-type": "application/json"}, timeout=10
        )
        assert served.status_code == 200
        assert server.process.poll() is None

        # After the drain the listener closes...
        while listening(server.port):
            assert time.monotonic() - sent < drain + 5, "the listener did not close after the drain"
            time.sleep(0.05)
        closed_after = time.monotonic() - sent
        assert closed_after >= drain * 0.9, closed_after

        # ...and the request accepted before completes with 200.
        assert server.process.poll() is None, "exited with a request in flight"
        with in_flight:
            in_flight.sendall(VALID[50:])
            status, _, body = read_response(in_flight)
        assert status == 200 and len(json.loads(body)["latent"][0]) == 32

        code = server.process.wait(timeout=grace)
        assert code == 0, server.log()
        assert time.monotonic() - sent < grace
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    assert '"message": "draining"' in log.replace('":"', '": "')


@pytest.mark.slow
def test_grace_period_bounds_the_shutdown(models_dir: Path, tmp_path: Path) -> None:
    """A client that never finishes its body cannot hold the process past the grace period: it is cut off with a
    JSON 503 a second before the grace period ends."""
    env = {"AE_DRAIN_SECONDS": "0.5", "AE_GRACEFUL_TIMEOUT_SECONDS": "3", "AE_BODY_TIMEOUT_SECONDS": "600"}
    server = start(one_model(models_dir, tmp_path), tmp_path / "server.log", env)
    try:
        wait_ready(server.base)
        stalled = raw_request(server.port, HEAD, VALID[:10])
        time.sleep(0.2)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)
        elapsed = time.monotonic() - sent
        status, headers, body = read_response(stalled, 5)
        stalled.close()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert code == 0, server.log()
    assert 1.8 <= elapsed <= 3 + 3, elapsed  # the grace period less the cut-off margin, plus noise
    assert status == 503 and json.loads(body)["error"]["type"] == "shutting_down", (status, body)
    assert headers["retry-after"]


@pytest.mark.slow
def test_second_sigterm_skips_the_rest_of_the_drain(models_dir: Path, tmp_path: Path) -> None:
    env = {"AE_DRAIN_SECONDS": "20", "AE_GRACEFUL_TIMEOUT_SECONDS": "25"}
    server = start(one_model(models_dir, tmp_path), tmp_path / "server.log", env)
    try:
        wait_ready(server.base)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(f"{server.base}/readyz", timeout=5).status_code == 503
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=15)
        assert code == 0 and time.monotonic() - sent < 5
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
