"""Photographs through the service: a 12-megapixel colour photo end to end, tiles vs bare ONNX Runtime, and eight
such uploads at once within the memory budgets (issue 14's numbers).

    python -m bench.photo_serving [--models models] [--model photo] [--width 4000 --height 3000]
                                  [--concurrent 8] [--out FILE]

1. Builds a noisy colour photograph of `--width` x `--height` (scikit-learn's `china` resized, sigma 25, 8-bit)
   and starts the service (`python -m app`, production settings) on `--models`.
2. **End to end**: one PNG upload to `/v1/models/{model}/denoise` (answer PNG), then the same pixels as `.npy` in
   and out (no image coding): wall time, seconds per megapixel, and the server's peak RSS above idle (VmHWM reset
   through /proc/PID/clear_refs before each request), per pixel: what `PHOTO_BYTES_PER_PIXEL` must cover.
3. **Bare ONNX Runtime** on the same pixels in this process: the whole image in one call (2 intra-op threads, the
   best any single caller gets) and in 1024 x 1024 crops; the service's tiled `.npy` pixels/s against the best of
   the two, and against the whole image (crops are faster per pixel but are not a denoised image: no overlap, seams).
4. **Concurrent**: `--concurrent` PNG uploads at once, each client retrying after `Retry-After` on 503 as a real
   client would: statuses, 503s seen, wall time, the server's peak RSS against idle + the three memory budgets.

Run by hand on an otherwise idle machine (minutes: the photo model needs ~4 s per megapixel on 2 cores); never in
CI. Numbers go to bench/RESULTS.md and the README with this command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.servers import process_tree, start_ours

MIB = 1024 * 1024


def noisy_photo(width: int, height: int, sigma: float = 25.0, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8: a bundled photograph resized to the size, with Gaussian noise, rounded and clipped."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    china = next(img for name, img in zip(bunch.filenames, bunch.images, strict=True) if name.endswith("china.jpg"))
    big = np.asarray(Image.fromarray(china).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for y in range(0, height, 512):  # in bands: no full-size float64 noise array
        band = big[y : y + 512]
        band += rng.normal(0.0, sigma, band.shape).astype(np.float32)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Peak:
    """The server's resident memory (all its processes), with the kernel's peak counter reset on demand."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _pids(self) -> list[int]:
        return process_tree(self.pid)

    def reset(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def read(self) -> tuple[int, int]:
        """(current RSS, peak RSS) in bytes, summed over the server's processes."""
        rss = hwm = 0
        for pid in self._pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1]) * 1024
            except OSError:
                pass
        return rss, hwm


@dataclass
class Upload:
    status: int = 0
    seconds: float = 0.0
    refusals: int = 0
    retry_after: list[str] = field(default_factory=list)
    sigma: str | None = None


def post(url: str, body: bytes, headers: dict[str, str], retry: bool) -> Upload:
    result = Upload()
    started = time.monotonic()
    with httpx.Client(timeout=900) as client:
        while True:
            response = client.post(url, content=body, headers=headers)
            if response.status_code == 503 and retry:
                result.refusals += 1
                after = response.headers.get("retry-after", "1")
                result.retry_after.append(after)
                time.sleep(float(after))
                continue
            break
    result.status = response.status_code
    result.seconds = time.monotonic() - started
    result.sigma = response.headers.get("x-sigma")
    if response.status_code != 200:
        print(f"# {url}: {response.status_code} {response.text[:300]}", file=sys.stderr, flush=True)
    return result


def bare_ort(model_dir: Path, rgb: np.ndarray, threads: int) -> dict[str, float]:
    """Seconds of one ONNX Runtime call on the whole image and pixels/s on 1024 x 1024 crops."""
    card = json.loads((model_dir / "card.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    path = model_dir / card["graphs"]["full"]["file"]
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = (rgb.transpose(2, 0, 1)[None].astype(np.float32)) / np.float32(255)
    sigma = np.array([25 / 255], dtype=np.float32)
    crop = np.ascontiguousarray(x[:, :, :1024, :1024])
    sess.run(None, {"x": crop, "sigma": sigma})  # warm-up
    started = time.perf_counter()
    for _ in range(2):
        sess.run(None, {"x": crop, "sigma": sigma})
    crop_pps = 2 * 1024 * 1024 / (time.perf_counter() - started)
    started = time.perf_counter()
    sess.run(None, {"x": x, "sigma": sigma})
    whole = time.perf_counter() - started
    pixels = rgb.shape[0] * rgb.shape[1]
    return {"whole_seconds": whole, "whole_pixels_per_s": pixels / whole, "crop_pixels_per_s": crop_pps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.photo_serving", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="the models folder to serve")
    p.add_argument("--model", default="photo")
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="bare ONNX Runtime's intra-op threads")
    p.add_argument("--env", default="", help="server settings, space-separated NAME=value (e.g. AE_TILE_SIZE=1024)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    pixels = args.width * args.height
    mp = pixels / 1e6
    rgb = noisy_photo(args.width, args.height)
    png = png_bytes(rgb)
    lines = [
        f"# `{args.model}`: a {args.width} x {args.height} ({mp:.1f} MP) colour photograph, sigma 25",
        "",
        f"`python -m bench.photo_serving --models {args.models} --model {args.model} --width {args.width} "
        f"--height {args.height} --concurrent {args.concurrent}"
        + (f' --env "{args.env}"' if args.env else "")
        + f"`; {os.cpu_count()} CPUs; PNG body "
        f"{len(png) / MIB:.1f} MiB.",
        "",
    ]
    print("\n".join(lines), flush=True)
    work = Path(tempfile.mkdtemp(prefix="photo-serving-"))
    env = {
        "AE_MODELS_DIR": str(args.models.resolve()),
        "AE_LOG_LEVEL": "warning",
        # the .npy variant sends the float pixels (12 bytes each) raw; tiles are checked one by one
        "AE_MAX_BODY_BYTES": str(max(96 * MIB, pixels * 12 + MIB)),
        "AE_MAX_REQUEST_VALUES": str(max(4 * MIB, pixels * 3)),
        "AE_REQUEST_MEMORY_BUDGET_BYTES": str(max(512 * MIB, pixels * 12 * 2 + 64 * MIB)),
        **dict(item.split("=", 1) for item in args.env.split()),
    }
    server = start_ours("photo", "python -m app", work, 1, env, timeout=300)
    rows: list[str] = []
    try:
        peak = Peak(server.process.pid)
        base = server.base_url
        url = f"{base}/v1/models/{args.model}/denoise"
        post(url, png_bytes(rgb[:512, :512]), {"content-type": "image/png"}, False)  # warm-up
        idle, _ = peak.read()
        # -- 1. end to end, PNG, then .npy
        peak.reset()
        one = post(url, png, {"content-type": "image/png"}, False)
        _, hwm = peak.read()
        png_growth = hwm - idle
        rows += [
            "| measure | value |",
            "|---|---|",
            f"| PNG in, PNG out: status, wall time | {one.status}, {one.seconds:.1f} s ({one.seconds / mp:.2f} s/MP) |",
            f"| estimated sigma (true 25) | {one.sigma} |",
            f"| server RSS idle (after a warm-up) | {idle / MIB:,.0f} MiB |",
            f"| peak RSS during the PNG request, above idle | {png_growth / MIB:,.0f} MiB "
            f"({png_growth / pixels:.1f} B per pixel) |",
        ]
        x = rgb.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
        body = npy_bytes(x)
        del x
        peak.reset()
        npy = post(f"{url}?sigma=25", body, {"content-type": "application/x-npy", "accept": "application/x-npy"}, False)
        _, hwm = peak.read()
        del body
        rows += [
            f"| `.npy` in and out (no image coding, sigma given): status, wall time | {npy.status}, "
            f"{npy.seconds:.1f} s ({npy.seconds / mp:.2f} s/MP) |",
            f"| peak RSS during the `.npy` request, above idle | {(hwm - idle) / MIB:,.0f} MiB |",
        ]
        print("\n".join(rows), flush=True)
        # -- 2. bare ONNX Runtime (the server is idle meanwhile)
        bare = bare_ort(args.models / args.model, rgb, args.threads)
        best = max(bare["whole_pixels_per_s"], bare["crop_pixels_per_s"])
        service_pps = pixels / npy.seconds
        more = [
            f"| bare ONNX Runtime, {args.threads} threads, whole image in one call | {bare['whole_seconds']:.1f} s "
            f"({bare['whole_pixels_per_s'] / 1e6:.3f} MP/s) |",
            f"| bare ONNX Runtime, {args.threads} threads, 1024 x 1024 crops | "
            f"{bare['crop_pixels_per_s'] / 1e6:.3f} MP/s |",
            f"| service, tiled, `.npy` over HTTP | {service_pps / 1e6:.3f} MP/s = **{service_pps / best:.2f}x** "
            "bare ONNX Runtime's best |",
            f"| the same against bare ONNX Runtime on the whole image (the same pixels, one call, no tiles) | "
            f"**{service_pps / bare['whole_pixels_per_s']:.2f}x** |",
        ]
        print("\n".join(more), flush=True)
        rows += more
        # -- 3. concurrent uploads, retrying on 503
        if args.concurrent >= 1:
            peak.reset()
            results: list[Upload] = [Upload() for _ in range(args.concurrent)]

            def worker(i: int) -> None:
                results[i] = post(url, png, {"content-type": "image/png"}, True)

            started = time.monotonic()
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrent)]
            for t in threads:
                t.start()
            sampled = 0
            while any(t.is_alive() for t in threads):
                sampled = max(sampled, peak.read()[0])
                time.sleep(0.5)
            wall = time.monotonic() - started
            _, hwm = peak.read()
            budgets = int(env["AE_REQUEST_MEMORY_BUDGET_BYTES"]) + 2 * 1024 * MIB  # + image and inference defaults
            statuses = sorted({r.status for r in results})
            more = [
                f"| {args.concurrent} uploads at once (clients retry after `Retry-After`): statuses | {statuses}, "
                f"{sum(r.refusals for r in results)} answers 503 on the way |",
                f"| ... wall time for all, slowest, fastest | {wall:.0f} s, {max(r.seconds for r in results):.0f} s, "
                f"{min(r.seconds for r in results):.0f} s |",
                f"| ... server peak RSS | {hwm / MIB:,.0f} MiB (idle {idle / MIB:,.0f} + budgets "
                f"{budgets / MIB:,.0f} = {(idle + budgets) / MIB:,.0f} MiB ceiling) |",
            ]
            print("\n".join(more), flush=True)
            rows += more
    finally:
        server.stop()
    report = "\n".join([*lines, *rows, ""])
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
