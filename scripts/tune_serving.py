"""Quick load runs that chose the serving defaults (batching knobs, worker count) on this machine.

    .venv/bin/python scripts/tune_serving.py [--seconds 5] [--rounds 2] [--configs NAME,...]

Starts the real service (`python -m app`, production settings apart from the knobs under test) on 127.0.0.1 with
the dense and denoise models, and drives it with wrk (Debian package `wrk`, one thread) from a separate
process. Configurations are interleaved round by round (the machine's speed drifts by tens of percent: compare
ratios within a round). Prints one line per run: requests/s, p50/p99 latency and the mean rows per ONNX Runtime
call (from `/metrics`). Not a test and not the benchmark (`bench/` is): just enough to pick defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("dense", "denoise")

# name -> (environment, workers)
CONFIGS: dict[str, tuple[dict[str, str], int]] = {
    "off": ({"AE_BATCHING": "0"}, 1),
    "delay0": ({"AE_BATCH_MAX_DELAY_MS": "0"}, 1),
    "delay05": ({"AE_BATCH_MAX_DELAY_MS": "0.5"}, 1),
    "delay1": ({"AE_BATCH_MAX_DELAY_MS": "1"}, 1),
    "delay2": ({"AE_BATCH_MAX_DELAY_MS": "2"}, 1),
    "conc1": ({"AE_INFERENCE_CONCURRENCY": "1"}, 1),
    "w2-off": ({"AE_BATCHING": "0"}, 2),
    "w1": ({}, 1),
    "w2": ({}, 2),
}


# name -> (path, content type, body, concurrency)
def cases(tmp: Path) -> dict[str, tuple[str, str, Path, int]]:
    rng = np.random.default_rng(0)
    one = tmp / "one.json"
    one.write_text(json.dumps({"inputs": rng.uniform(0, 1, size=(1, 784)).round(4).tolist()}))
    digit = tmp / "digit.npy"
    np.save(digit, rng.uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32))
    big = tmp / "big.npy"
    np.save(big, rng.uniform(0, 1, size=(1, 1, 256, 256)).astype(np.float32))
    return {
        "encode-1row-json-c1": ("/v1/models/dense/encode", "application/json", one, 1),
        "encode-1row-json-c32": ("/v1/models/dense/encode", "application/json", one, 32),
        "denoise-28-npy-c32": ("/v1/models/denoise/denoise", "application/x-npy", digit, 32),
        "denoise-256-npy-c8": ("/v1/models/denoise/denoise", "application/x-npy", big, 8),
    }


LUA = """
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CTYPE")
wrk.headers["Accept"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def start(models: Path, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environ = {**os.environ, "AE_LOG_LEVEL": "warning", "AE_GRPC_PORT": "0", **env}  # HTTP only: no port 8001 clash
    command = [sys.executable, "-m", "app", "--port", str(port), "--models-dir", str(models), "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while get(f"{base}/readyz")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {command} {env}")
        time.sleep(0.2)
    return process, base


def batch_stats(text: str, model: str) -> tuple[float, float]:
    count = rows = 0.0
    for line in text.splitlines():
        if line.startswith("ae_inference_batch_size_") and f'model="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("ae_inference_batch_size_count"):
                count += value
            elif line.startswith("ae_inference_batch_size_sum"):
                rows += value
    return count, rows


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(base: str, path: str, ctype: str, body: Path, connections: int, seconds: float, lua: Path) -> dict[str, float]:
    env = {**os.environ, "BODY": str(body), "CTYPE": ctype}
    duration = f"-d{max(1, round(seconds))}s"
    command = ["wrk", "-t1", f"-c{connections}", duration, "--latency", "-s", str(lua), base + path]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": float(non2xx.group(1)) if non2xx else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--cases", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        for name in MODELS:
            (models / name).symlink_to(REPO / "models" / name, target_is_directory=True)
        lua = tmp / "post.lua"
        lua.write_text(LUA)
        table = cases(tmp)
        chosen = [c for c in args.cases.split(",") if c] or list(table)
        print(f"# usable CPUs {len(os.sched_getaffinity(0))}; {args.seconds:g} s per run; wrk -t1", flush=True)
        for round_ in range(args.rounds):
            for config in args.configs.split(","):
                env, workers = CONFIGS[config]
                process, base = start(models, env, workers)
                try:
                    for case in chosen:
                        path, ctype, body, connections = table[case]
                        model = path.split("/")[3]
                        wrk(base, path, ctype, body, connections, 1.0, lua)  # warm-up
                        before = batch_stats(get(f"{base}/metrics")[1], model)
                        result = wrk(base, path, ctype, body, connections, args.seconds, lua)
                        after = batch_stats(get(f"{base}/metrics")[1], model)
                        calls, rows = after[0] - before[0], after[1] - before[1]
                        rows_per_call = rows / calls if calls else 0.0
                        print(
                            f"round {round_} {config:8s} {case:22s} {result['rps']:8.0f} req/s  "
                            f"p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms  "
                            f"rows/call {rows_per_call:5.1f}  non-2xx {result['errors']:.0f}",
                            flush=True,
                        )
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)


if __name__ == "__main__":
    main()
