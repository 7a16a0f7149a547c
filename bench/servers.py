"""The servers under test, as real processes on 127.0.0.1: ours (`python -m app`, production settings plus the
no-op ceilings), the peers (MLServer, the tutorial FastAPI app and BentoML, each in its own virtualenv) and the
external echo ceiling (bare uvicorn). Start-up time, memory of the process tree, stop.
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
PEERS = BENCH / "peers"
MLSERVER_REQUIREMENTS = BENCH / "requirements-mlserver.txt"
TUTORIAL_REQUIREMENTS = BENCH / "requirements-tutorial.txt"
BENTOML_REQUIREMENTS = BENCH / "requirements-bentoml.txt"


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


def peer_venv(venv: Path, requirements: Path) -> Path:
    """A peer's own virtualenv (created, or updated when its requirements file changed); its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"# installing {requirements.name} into {venv} (once; pip from PyPI)", flush=True)
    if not python.exists():
        # The interpreter behind our virtualenv, so that the peer's environment shares nothing with ours.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(wanted)
    return python


def mlserver_venv(venv: Path) -> Path:
    """MLServer's own virtualenv (`bench/.venv-mlserver`); its python."""
    return peer_venv(venv, MLSERVER_REQUIREMENTS)


def package_versions(python: Path, packages: tuple[str, ...]) -> str:
    """`name version` of each package installed for `python` (a peer's virtualenv), comma-separated."""
    code = (
        "import sys\nfrom importlib.metadata import version\n"
        "print(', '.join(f'{n} {version(n)}' for n in sys.argv[1:]))"
    )
    out = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


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


def peer_env(model_file: Path, intra_op_threads: int, **extra: str) -> dict[str, str]:
    """The environment of a peer in its own virtualenv: the model and ORT's thread count, none of ours."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODEL_PATH": str(model_file.resolve()),
           "ORT_THREADS": str(intra_op_threads), **extra}  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def launch(name: str, description: str, command: list[str], env: dict[str, str], run_dir: Path, port: int,
           ready_path: str, timeout: float, cwd: Path = REPO) -> Server:  # fmt: skip
    """Start `command` (logs to run_dir/<name>.log); returns once GET `ready_path` answers 200."""
    log_path = run_dir / f"{name}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, description, f"http://127.0.0.1:{port}", process, log_path)
    wait_ready(server, [server.base_url + ready_path], started, timeout)
    return server


def start_tutorial(python: Path, run_dir: Path, model_file: Path, intra_op_threads: int, name: str = "tutorial",
                   timeout: float = 120) -> Server:  # fmt: skip
    """`bench/peers/tutorial_app.py` under uvicorn (its defaults: httptools, uvloop, access log), one worker."""
    port = free_port()
    command = [str(python), "-m", "uvicorn", "tutorial_app:app", "--app-dir", str(PEERS), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]  # fmt: skip
    description = (f"FastAPI + pydantic + ONNX Runtime as the tutorials write it (`bench/peers/tutorial_app.py`), "
                   f"uvicorn defaults, 1 worker, ORT intra-op threads {intra_op_threads}, no spinning")  # fmt: skip
    env = peer_env(model_file, intra_op_threads)
    return launch(name, description, command, env, run_dir, port, "/health", timeout)


def start_bentoml(python: Path, run_dir: Path, model_file: Path, intra_op_threads: int, name: str = "bentoml",
                  timeout: float = 180) -> Server:  # fmt: skip
    """`bentoml serve bentoml_service:Encoder` (`bench/peers/bentoml_service.py`), 1 worker, its defaults."""
    port = free_port()
    home = run_dir / "bentoml-home"  # BentoML's store and config: the run's scratch folder, not ~/bentoml
    home.mkdir(parents=True, exist_ok=True)
    command = [str(python.parent / "bentoml"), "serve", "bentoml_service:Encoder", "--working-dir", str(PEERS),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    description = (f"BentoML (`bench/peers/bentoml_service.py`, `@bentoml.service(workers=1)`), `bentoml serve` "
                   f"defaults, ORT intra-op threads {intra_op_threads}, no spinning")  # fmt: skip
    env = peer_env(model_file, intra_op_threads, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True")
    return launch(name, description, command, env, run_dir, port, "/readyz", timeout)


def _bare_uvicorn(app: str, port: int) -> list[str]:
    """`app` under bare uvicorn in the service's own virtualenv: httptools, uvloop, no access log, one worker."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
            "--loop", "uvloop", "--no-access-log", "--workers", "1"]  # fmt: skip


def start_floor(run_dir: Path, model_file: Path, intra_op_threads: int, name: str = "floor",
                timeout: float = 60) -> Server:  # fmt: skip
    """The floor: `bench/peers/floor.py` (1-row JSON encode in a bare ASGI callable, ONNX Runtime inline, a JSON
    log line and metrics) under the echo's uvicorn, in the service's own virtualenv."""
    port = free_port()
    command = _bare_uvicorn("bench.peers.floor:app", port)
    description = (f"the floor (`bench/peers/floor.py`): bare ASGI, ONNX Runtime inline (intra-op threads "
                   f"{intra_op_threads}), a JSON log line and metrics; the echo's uvicorn, 1 worker")  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODEL_PATH": str(model_file.resolve()),
           "ORT_THREADS": str(intra_op_threads)}  # fmt: skip
    return launch(name, description, command, env, run_dir, port, "/", timeout)


def start_echo(run_dir: Path, name: str = "echo", timeout: float = 60) -> Server:
    """The external ceiling: `bench/peers/echo.py` under bare uvicorn (httptools, uvloop, no access log, one
    worker), in the service's own virtualenv (the same uvicorn, httptools and uvloop as ours)."""
    port = free_port()
    command = _bare_uvicorn("bench.peers.echo:app", port)
    description = "bare ASGI echo (`bench/peers/echo.py`): uvicorn, httptools, uvloop, no access log, 1 worker"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return launch(name, description, command, env, run_dir, port, "/", timeout)
