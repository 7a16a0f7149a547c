"""gRPC raw tensors vs HTTP binary tensors vs HTTP JSON, on `dense` encode (1 and 64 rows) at concurrency 1 and 32.

    python -m bench.grpc_vs_http [--seconds 5] [--rounds 2] [--http http://127.0.0.1:8000 --grpc 127.0.0.1:8001]

Without `--http`, starts the service itself (`python -m app`, `dense` only, free ports) and stops it at the end.
Each case is a closed loop of `c` concurrent callers in one asyncio client process for `--seconds`, rounds
interleaved (compare within a round: the client shares the machine's CPUs with the server, and httpx spends more
client CPU per call than grpc.aio, so part of a gap is the client's). The three clients
send the same request every time, built once, so that what differs is the protocol the server decodes:

- `grpc-raw`: `ModelInfer` with `raw_input_contents` (what tritonclient.grpc sends), through `grpc.aio`;
- `http-binary`: `POST /v2/models/dense.encoder/infer`, JSON header + raw float32 (binary tensor extension) in and
  out, through httpx;
- `http-json`: the same route with the tensor as JSON numbers in and out.

Not run by the tests (it takes minutes); it prints a Markdown table of requests/s and p50/p99 latency (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
MODEL = "dense.encoder"
PROTOCOLS = ("grpc-raw", "http-binary", "http-json")
ROWS = (1, 64)
CONCURRENCY = (1, 32)

Call = Callable[[], Awaitable[None]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def service() -> Iterator[tuple[str, str]]:
    """`python -m app` on `dense` alone (a copy of models/dense), free HTTP and gRPC ports; stopped with SIGTERM."""
    models = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    shutil.copytree(REPO / "models" / "dense", models / "dense")
    port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "app", "--port", str(port), "--grpc-port", str(grpc_port)]
    command += ["--models-dir", str(models), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "AE_LOG_LEVEL": "warning"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)
        yield base, f"127.0.0.1:{grpc_port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(models, ignore_errors=True)


def grpc_caller(stub: pb_grpc.GRPCInferenceServiceStub, x: np.ndarray) -> Call:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())

    async def call() -> None:
        response = await stub.ModelInfer(request)
        assert len(response.raw_output_contents[0]) == x.shape[0] * 32 * 4

    return call


def http_caller(client: httpx.AsyncClient, x: np.ndarray, binary: bool) -> Call:
    tensor: dict[str, object] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        header = orjson.dumps({"inputs": [tensor], "outputs": [{"name": "z", "parameters": {"binary_data": True}}]})
        body = header + x.astype("<f4").tobytes()
        headers = {"Inference-Header-Content-Length": str(len(header))}
    else:
        tensor["data"] = x.reshape(-1).tolist()
        body = orjson.dumps({"inputs": [tensor]})
        headers = {"Content-Type": "application/json"}

    async def call() -> None:
        response = await client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert response.status_code == 200, response.text

    return call


async def closed_loop(call: Call, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    """`concurrency` callers, each calling again as soon as its answer arrives, for `seconds`."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(latencies), latencies


async def measure(base: str, target: str, seconds: float, rounds: int) -> list[tuple[int, str, int, int, dict]]:
    rows_out = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for round_ in range(rounds):
            for rows in ROWS:
                x = np.random.default_rng(rows).uniform(0, 1, size=(rows, 784)).astype(np.float32)
                callers = {
                    "grpc-raw": grpc_caller(stub, x),
                    "http-binary": http_caller(client, x, binary=True),
                    "http-json": http_caller(client, x, binary=False),
                }
                for concurrency in CONCURRENCY:
                    for protocol in PROTOCOLS:
                        await closed_loop(callers[protocol], concurrency, min(1.0, seconds / 4))  # warm-up
                        count, latencies = await closed_loop(callers[protocol], concurrency, seconds)
                        latencies.sort()
                        result = {
                            "rps": count / seconds,
                            "p50": statistics.median(latencies) * 1000,
                            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
                        }
                        rows_out.append((round_, protocol, rows, concurrency, result))
                        print(
                            f"round {round_} {protocol:11s} rows={rows:2d} c={concurrency:2d}: "
                            f"{result['rps']:8.1f} req/s  p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms",
                            file=sys.stderr,
                        )
    return rows_out


def table(results: list[tuple[int, str, int, int, dict]]) -> str:
    lines = ["| round | rows | c | protocol | req/s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for round_, protocol, rows, concurrency, r in results:
        lines.append(
            f"| {round_} | {rows} | {concurrency} | {protocol} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_vs_http", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--http", help="base URL of a running service (default: start one)")
    p.add_argument("--grpc", help="host:port of its gRPC server (with --http)")
    args = p.parse_args(argv)
    if args.http:
        if not args.grpc:
            p.error("--http needs --grpc")
        results = asyncio.run(measure(args.http, args.grpc, args.seconds, args.rounds))
    else:
        with service() as (base, target):
            results = asyncio.run(measure(base, target, args.seconds, args.rounds))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
