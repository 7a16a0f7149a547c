"""Quality of the exported `photo` denoiser (ONNX Runtime, not PyTorch) on the held-out photographs.

    python -m bench.photo_quality --model models/photo [--out FILE] [--sigmas 15 25 50] [--no-bm3d]

Runs `models/photo` on camera, coins (gray), coffee and flower (colour) with Gaussian noise at each
sigma (fixed seed, 8-bit rounded and clipped, the same noisy images as the training eval), blind (sigma from
`app.core.noise.estimate_sigma`) and with the true sigma, beside the noisy input, a 3x3 median, scikit-image's
NL-means (true sigma), wavelet and TV denoisers, and BM3D (CBM3D for colour) when installed. Prints a markdown
table of PSNR and SSIM, gray and colour separately, and writes it to FILE with --out. As the service does, gray
photographs go through the card's `gray` graph when it has one (the gray specialist), colour ones through `full`.

BM3D: `pip install bm3d` into the virtualenv by hand. Its licence allows non-commercial use only, so it is not
a dependency of this project (in no pyproject extra); without it the BM3D column is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.core.images import identical_channels
from training import photo_eval
from training.data.photos import load_held_out, load_train_photos


def sessions(model_dir: Path, threads: int) -> dict[str, ort.InferenceSession]:
    """The card's `full` graph and, when it has one, its `gray` graph, by role."""
    card = json.loads((model_dir / "card.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    out = {}
    for role in ("full", "gray"):
        if role in card["graphs"]:
            path = model_dir / card["graphs"][role]["file"]
            out[role] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for role, sess in out.items():
        names = [i.name for i in sess.get_inputs()]
        if names != ["x", "sigma"]:
            raise SystemExit(f"expected the photo {role} graph's inputs ['x', 'sigma'], got {names}")
    return out


def onnx_denoiser(graphs: dict[str, ort.InferenceSession]) -> photo_eval.Denoiser:
    full, gray = graphs["full"], graphs.get("gray")

    def fn(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        if gray is not None and identical_channels(x):
            return np.repeat(gray.run(None, {"x": np.ascontiguousarray(x[:, :1]), "sigma": sigma})[0], 3, axis=1)
        return full.run(None, {"x": x, "sigma": sigma})[0]

    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.photo_quality", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/photo"), help="model folder (card.json, graphs)")
    p.add_argument("--sigmas", type=int, nargs="+", default=list(photo_eval.GATE_SIGMAS), help="on the 0..255 scale")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--no-bm3d", action="store_true", help="skip BM3D even if installed (it is slow)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    graphs = sessions(args.model, args.threads)
    fn = onnx_denoiser(graphs)
    methods = ["median3x3", "nl_means", "wavelet", "tv"]
    notes = []
    if args.no_bm3d:
        notes.append("BM3D skipped (--no-bm3d).")
    elif photo_eval.bm3d_available():
        methods.append("bm3d")
        notes.append("BM3D: the `bm3d` package (non-commercial licence; installed by hand, not a dependency).")
    else:
        msg = "BM3D skipped: the `bm3d` package is not installed (`pip install bm3d`; non-commercial licence)."
        print(msg, file=sys.stderr)
        notes.append(msg)
    sigmas = tuple(args.sigmas)
    tune = [p for p in load_train_photos() if p.name in ("astronaut", "chelsea")]
    tv_weights = photo_eval.tune_tv_weights(tune, sigmas)
    start = time.perf_counter()
    result = photo_eval.evaluate(
        fn, load_held_out(), sigmas, tuple(methods), tv_weights, log=lambda m: print(m, file=sys.stderr)
    )
    tracking = photo_eval.sigma_tracking(load_held_out(), tuple(sorted({0, 5, *sigmas})))
    lines = [
        f"# photo denoiser quality: {args.model}, graphs {', '.join(graphs)} (ONNX Runtime {ort.__version__}, "
        f"{args.threads} threads)",
        "",
        "Held-out photographs: camera, coins (gray); coffee, flower (colour). Gaussian noise, 8-bit rounded and "
        "clipped, fixed seed. `model_blind`: sigma from `app.core.noise.estimate_sigma`; `model_given_sigma` and every "
        "classical method: the true sigma. PSNR/SSIM averaged over the photos of a kind.",
        "",
        f"TV weights (tuned on training photos): {tv_weights}. " + " ".join(notes),
        "",
        photo_eval.markdown_table(result),
        "### Sigma estimator (app/core/noise.py), estimates in 1/255",
        "",
        "| true σ | " + " | ".join(next(iter(tracking.values()))["estimates"]) + " | mean abs error |",
        "|---|" + "---|" * (len(next(iter(tracking.values()))["estimates"]) + 1),
        *(
            f"| {s} | "
            + " | ".join(f"{v:.2f}" for v in row["estimates"].values())
            + f" | {row['mean_abs_error']:.2f} |"
            for s, row in tracking.items()
        ),
        "",
        "Seconds per method (all photos and sigmas): "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items())
        + f"; total {time.perf_counter() - start:.0f} s.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
