"""Progress of a `photo` training run: PSNR of its checkpoint on the held-out photographs, at sigma 15, 25, 50.

    .venv/bin/python scripts/photo_checkpoint_psnr.py [runs/photo/checkpoint.pt] [--last]

Loads the checkpoint's best weights (`--last`: the latest) into PyTorch (one thread, beside a running training) and
denoises the central 256x256 crop of each held-out photograph (camera, coins gray; coffee, flower colour) with the
true sigma, printing the noisy and the denoised PSNR. A quick look while training runs, not the gate: the gate is
`python -m bench.photo_quality` on the exported ONNX model, on whole images, beside BM3D.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import photo_eval  # noqa: E402
from training.data.photos import Photo, load_held_out  # noqa: E402
from training.models.photo import DEFAULT_CHECKPOINT, PhotoDenoiser  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default=str(REPO / DEFAULT_CHECKPOINT))
    p.add_argument("--last", action="store_true", help="the latest weights instead of the best")
    p.add_argument("--crop", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = saved["config"]
    net = PhotoDenoiser(cfg["channels"], cfg["blocks"])
    best = saved.get("best") or {}
    net.load_state_dict(saved["model"] if args.last or not best.get("model") else best["model"])
    net.eval()
    print(f"step {saved.get('step')}; best validation {best.get('val_psnr')} dB at step {best.get('step')}")

    def denoise(x, sigma):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return net(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()

    for sigma in (15, 25, 50):
        cells = []
        for photo in load_held_out():
            h, w = photo.image.shape[:2]
            c = min(h, w, args.crop)
            crop = Photo(photo.name, photo.image[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
            noisy = photo_eval.noisy_version(crop, sigma)
            out = photo_eval.run_denoiser(denoise, noisy, sigma / 255)
            cells.append(
                f"{photo.name} {photo_eval.psnr(crop.image, noisy):.2f} -> {photo_eval.psnr(crop.image, out):.2f}"
            )
        print(f"sigma {sigma}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
