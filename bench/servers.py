"""The servers under test, as real processes on 127.0.0.1: ours (`python -m app`, production settings plus the
no-op ceilings) and the peer (MLServer in its own virtualenv). Start-up time, memory of the process tree, stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MLSERVER_REQUIREMENTS = BENCH / "requirements-mlserver.txt"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:  # fmt: skip
    """One request with the standard library (never through a proxy); (status, body), status 0 when refused."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (uvicorn's workers, MLServer's inference pool)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(current RSS, peak RSS) summed over `pids`, in KiB, from /proc/<pid>/status (VmRSS, VmHWM)."""
    rss = hwm = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


@dataclass
class Server:
    """A running server and what it took to start it."""

    name: str
    description: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_seconds: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    requests_served: int = 0

    def memory_kib(self) -> tuple[int, int]:
        return memory_kib(process_tree(self.process.pid))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful drain), then SIGKILL if it hangs; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def wait_ready(server: Server, ready_urls: list[str], started: float, timeout: float) -> None:
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} before it was ready:\n{server.log_tail()}"
            )
        if all(http("GET", url, timeout=2)[0] == 200 for url in ready_urls):
            server.ready_seconds = time.monotonic() - started
            return
        if time.monotonic() - started > timeout:
            server.stop(5)
            raise RuntimeError(f"{server.name} was not ready within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.05)


def start_ours(name: str, description: str, run_dir: Path, workers: int, env: dict[str, str],
               timeout: float = 120, checkout: Path = REPO) -> Server:  # fmt: skip
    """`python -m app` with production settings (plus `env`), logs to a file; returns once /readyz is 200.
    `checkout`: the source tree whose code runs (another commit's work tree, for an A/B between commits)."""
    port = free_port()
    # No gRPC listener (AE_GRPC_PORT=0): several servers run at once here and would all want port 8001.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "AE_BENCH_ENDPOINTS": "1", "AE_GRPC_PORT": "0", **env}
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log_path = run_dir / f"{name}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=checkout, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, description, f"http://127.0.0.1:{port}", process, log_path, env=env)
    wait_ready(server, [f"{server.base_url}/readyz"], started, timeout)
    return server


def mlserver_venv(venv: Path) -> Path:
    """MLServer's own virtualenv (created, or updated when the requirements changed); its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = MLSERVER_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"# installing MLServer into {venv} (once; pip from PyPI)", flush=True)
    if not python.exists():
        # The interpreter behind our virtualenv, so that MLServer's environment shares nothing with ours.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(MLSERVER_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def mlserver_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def start_mlserver(python: Path, run_dir: Path, model_name: str, model_file: Path, version: str,
                   intra_op_threads: int, name: str = "mlserver", batching: tuple[int, float] | None = None,
                   timeout: float = 180) -> Server:  # fmt: skip
    """MLServer with its default settings, one model (`bench/mlserver_runtime.py` over `model_file`); with
    `batching` = (max_batch_size, max_batch_time in seconds), its adaptive batching on."""
    repo = run_dir / name
    (repo / model_name).mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "debug": False}
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model_name,
        "implementation": "mlserver_runtime.OnnxRuntimeModel",
        "parameters": {
            "uri": str(model_file.resolve()),
            "version": version,
            "extra": {"intra_op_threads": intra_op_threads},
        },
    }
    if batching is not None:
        model_settings["max_batch_size"], model_settings["max_batch_time"] = batching
    (repo / model_name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = {**os.environ, "PYTHONPATH": str(BENCH), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    log_path = run_dir / f"{name}.log"
    mlserver = python.parent / "mlserver"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(mlserver), "start", str(repo)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{http_port}"
    what = "default settings"
    if batching:
        what = f"adaptive batching on (max_batch_size={batching[0]}, max_batch_time={batching[1]} s)"
    server = Server(name, f"Seldon MLServer, {what}", base, process, log_path)
    wait_ready(server, [f"{base}/v2/health/ready", f"{base}/v2/models/{model_name}/ready"], started, timeout)
    return server
