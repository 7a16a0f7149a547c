"""A real service process (`python -m app` on 127.0.0.1) for the tests whose behaviour lives in the server:
limits, timeouts, overload, shutdown. Started with its own environment, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.app.conftest import REPO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (killed after `timeout` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start(
    models_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/healthz",
    args: Sequence[str] = (),
) -> LiveServer:
    """Start the service (`args`: extra command-line options) and wait until `ready_path` answers (any status)."""
    port = free_port()
    full_env = {**os.environ, "AE_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--models-dir", str(models_dir)]
    command += list(args)
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    server = LiveServer(process, port, log_path)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was up:\n{server.log()}")
        try:
            httpx.get(f"{server.base}{ready_path}", timeout=2)
            return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server was not up within 90 s:\n{server.log()}")
        time.sleep(0.1)


@contextmanager
def running(
    models_dir: Path, log_path: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[LiveServer]:
    """A started service, waited on until ready (all models loaded), stopped with SIGTERM at the end (exit 0)."""
    server = start(models_dir, log_path, env, args=args)
    try:
        deadline = time.monotonic() + 90
        while httpx.get(f"{server.base}/readyz", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within 90 s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exit code {code}:\n{server.log()[-3000:]}"


def raw_request(port: int, head: str, body: bytes = b"", source: str | None = None) -> socket.socket:
    """Open a connection and send a request head (CRLF line ends added) and the start of a body, for tests that
    need to control the timing of the bytes; the caller reads and closes. `source`: another loopback address to
    connect from (e.g. 127.0.0.2, a second client)."""
    address = (source, 0) if source else None
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=address)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (status, lower-case headers, body) from a raw socket until it closes or the
    declared length arrives."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body
