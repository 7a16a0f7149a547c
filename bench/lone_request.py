"""A lone request against the machine: denoise images one at a time (c=1) and four at a time (c=4) through the
service, `.npy` in and out (no image coding; PNG at c=1 for reference; `?sigma=25` where the model takes the
noise level, as bare ONNX Runtime is given it), beside bare ONNX Runtime on the same
graph in this process, measured in the same run (issue 19's targets: ours >= 0.9x bare ORT's best single caller at
c=1, and >= 0.9x its best concurrent figure at c=4).

    .venv/bin/python -m bench.lone_request                          # denoise and photo, 256 and 1024 px, ~4 min
    .venv/bin/python -m bench.lone_request --models photo --sides 1024 --env "AE_LONE_INTRA_OP_THREADS=1"

Bare ONNX Runtime: one caller with 1, 2, ... usable-CPU intra-op threads (its best is the c=1 reference), and
usable-CPU callers x 1 thread each (with the single caller's best, the c=4 reference). Run by hand on an idle
machine, never in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from app.settings import usable_cpus
from bench.servers import REPO, start_ours


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def image(channels: int, side: int, seed: int = 0) -> np.ndarray:
    """A smooth image with noise, [1, C, side, side] in [0, 1] (what the denoisers see; content does not change
    their cost)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = 0.5 + 0.3 * np.sin(6 * x + 3 * y)[None]
    noisy = base + rng.normal(0, 0.1, size=(channels, side, side))
    return np.clip(noisy, 0, 1).astype(np.float32)[None]


def closed_loop(url: str, body: bytes, headers: dict[str, str], callers: int, seconds: float) -> float:
    """Answers per second of `callers` clients each sending the next request when the last one is answered."""
    counts = [0] * callers
    stop = time.perf_counter() + seconds
    failures: list[str] = []

    def caller(i: int) -> None:
        with httpx.Client(timeout=600) as client:
            while time.perf_counter() < stop:
                response = client.post(url, content=body, headers=headers)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    return
                counts[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{url}: {failures[0]}")
    return sum(counts) / (time.perf_counter() - started)


def bare(model_dir: Path, x: np.ndarray, seconds: float) -> dict[str, float]:
    """Images/s of bare ONNX Runtime: one caller per thread count, and usable-CPU callers x 1 thread."""
    card = json.loads((model_dir / "card.json").read_text())
    path = str(model_dir / card["graphs"]["full"]["file"])
    takes_sigma = any(i["name"] == "sigma" for i in card["graphs"]["full"]["inputs"])
    feeds = {"x": x, **({"sigma": np.array([25 / 255], dtype=np.float32)} if takes_sigma else {})}
    cpus = usable_cpus()

    def session(threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        return sess

    def rate(sessions: list[ort.InferenceSession]) -> float:
        counts = [0] * len(sessions)
        stop = time.perf_counter() + seconds

        def run(i: int) -> None:
            while time.perf_counter() < stop:
                sessions[i].run(None, feeds)
                counts[i] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - started)

    out = {f"1 caller x {n} threads": rate([session(n)]) for n in range(1, cpus + 1)}
    if cpus > 1:
        out[f"{cpus} callers x 1 thread"] = rate([session(1) for _ in range(cpus)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lone_request", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["denoise", "photo"])
    p.add_argument("--sides", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measured cell")
    p.add_argument("--env", default="", help="server settings, space-separated NAME=value")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    args = p.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env.split())
    env.setdefault("AE_MODELS_DIR", str(args.models_dir.resolve()))
    server = start_ours("lone", args.env or "defaults", Path(tempfile.mkdtemp(prefix="ae-lone-")), 1, env)
    print(f"# `python -m bench.lone_request --models {' '.join(args.models)} --sides "
          f"{' '.join(map(str, args.sides))} --seconds {args.seconds:g}" + (f' --env "{args.env}"' if args.env else "")
          + f"`; {usable_cpus()} usable CPUs")  # fmt: skip
    print("\n| model | side | bare ORT best 1 caller (img/s) | ours c=1 .npy | ratio | ours c=1 PNG | "
          "bare ORT best concurrent | ours c=4 .npy | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"<!-- load average before: {os.getloadavg()[0]:.2f} -->")
    try:
        for model in args.models:
            card = json.loads((args.models_dir / model / "card.json").read_text())
            channels = card["graphs"]["full"]["inputs"][0]["shape"][1]
            takes_sigma = any(i["name"] == "sigma" for i in card["graphs"]["full"]["inputs"])
            # The noise level given, as bare ONNX Runtime is given it: a blind request adds the estimate (numpy,
            # off the event loop), which is the service's work but not the graph's.
            url = f"{server.base_url}/v1/models/{model}/denoise" + ("?sigma=25" if takes_sigma else "")
            for side in args.sides:
                x = image(channels, side)
                body = npy(x)
                pixels = (x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(png, format="PNG")
                npy_headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
                closed_loop(url, body, npy_headers, 1, min(2.0, args.seconds))  # warm-up
                ours1 = closed_loop(url, body, npy_headers, 1, args.seconds)
                ours_png = closed_loop(url, png.getvalue(), {"content-type": "image/png"}, 1, args.seconds)
                ours4 = closed_loop(url, body, npy_headers, 4, args.seconds)
                ref = bare(args.models_dir / model, x, args.seconds)
                best1 = max(v for k, v in ref.items() if k.startswith("1 caller"))
                best_any = max(ref.values())
                print(f"| {model} | {side} | {best1:.2f} | {ours1:.2f} | **{ours1 / best1:.2f}x** | {ours_png:.2f} | "
                      f"{best_any:.2f} | {ours4:.2f} | **{ours4 / best_any:.2f}x** |", flush=True)  # fmt: skip
                print(f"<!-- bare ORT {model} {side}: {json.dumps({k: round(v, 3) for k, v in ref.items()})} -->")
    finally:
        server.stop()
    print(f"<!-- load average after: {os.getloadavg()[0]:.2f} -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
