"""`python -m tests.browser.demo_assets`: write the data files the demo page and the README's examples use.

- `app/static/digits.json`: the demo's ten sample digits, one held-out digit per class: the first image of each
  label in the MNIST test split the models were evaluated on (`training.data.mnist.load_mnist`, seed 0), 0-255.
- `app/static/examples/`: inputs for the README's curl examples, served by the service itself under
  `/demo-assets/examples/`: two digits (1 and 7) as a `/v1` JSON body of 784-pixel rows, the 7 as PNG, the same
  digit noisy and at twice the size, BasicMotions test series
  (walking and running: normal and anomalous for `lstm-anomaly`) as `/v1` JSON bodies, and the demo's two sample
  photographs for the photograph denoiser (`camera.png`, gray, and `coffee.png`, colour): scikit-image's
  `skimage.data.camera()` (Lav Varshney) and `skimage.data.coffee()` (Rachel Michetti), both CC0 ("no copyright
  restrictions"), downscaled (Lanczos) to 384x384 and 384x256, and the coffee with Gaussian noise of sigma 25
  (seeded, 8-bit) as `coffee-noisy-25.png` and `.jpg` (quality 95) for the README. Both are held out of the
  denoiser's training (`training.data.photos.HELD_OUT`), so the demo shows it on photographs it never saw.

tests/browser/test_assets.py checks that the committed files are what this writes.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data.mnist import load_mnist
from training.data.timeseries import load_basic_motions

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
DIGITS_FILE = STATIC / "digits.json"
EXAMPLES = STATIC / "examples"


def demo_digits() -> dict[str, Any]:
    """The digits file's content: provenance and one 28x28 digit per class, row-major, 0-255."""
    data = load_mnist(seed=0)
    digits: dict[str, list[int]] = {}
    for label in range(10):
        index = int(np.flatnonzero(data.test.y == label)[0])
        pixels = np.rint(data.test.x[index].reshape(-1) * 255).astype(int)
        digits[str(label)] = [int(v) for v in pixels]
    return {
        "source": data.provenance["source"] + "; the first test-split image of each digit (seed 0)",
        "shape": [28, 28],
        "scale": "0-255 (divide by 255 for the models' [0, 1])",
        "digits": digits,
    }


def render_digits(content: dict[str, Any]) -> str:
    """One digit per line, so the file stays readable in a diff."""
    head = {k: v for k, v in content.items() if k != "digits"}
    lines = [json.dumps(head)[:-1] + ', "digits": {']
    items = list(content["digits"].items())
    for i, (label, pixels) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f'  "{label}": {json.dumps(pixels, separators=(",", ":"))}{comma}')
    lines.append("}}")
    return "\n".join(lines) + "\n"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# name -> (skimage.data loader, size (width, height)): small enough to denoise in a moment on a CPU
SAMPLE_PHOTOS = {"camera": ("camera", (384, 384)), "coffee": ("coffee", (384, 256))}


def sample_photos() -> dict[str, bytes]:
    """The demo's sample photographs as PNG files (8-bit gray or RGB), by file name."""
    import skimage.data  # the train extra (the service never needs it): imported only when the files are written

    files = {}
    for name, (loader, size) in SAMPLE_PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, loader)()).resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        files[f"{name}.png"] = buffer.getvalue()
        if name == "coffee":  # the README's photograph examples: the same with sigma 25 noise, as PNG and JPEG
            clean = np.asarray(image, dtype=np.float64)
            noise = np.random.default_rng(25).normal(0.0, 25.0, clean.shape)
            noisy = Image.fromarray(np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8))
            for fmt, ext, options in (("PNG", "png", {"optimize": True}), ("JPEG", "jpg", {"quality": 95})):
                buffer = io.BytesIO()
                noisy.save(buffer, format=fmt, **options)
                files[f"{name}-noisy-25.{ext}"] = buffer.getvalue()
    return files


def example_files(digits: dict[str, Any]) -> dict[str, bytes]:
    """Example inputs by file name."""
    seven = np.asarray(digits["digits"]["7"], dtype=np.float64).reshape(28, 28) / 255
    big = np.kron(seven, np.ones((2, 2)))  # 56x56: the denoiser is fully convolutional
    noisy = np.clip(big + np.random.default_rng(7).normal(0, 0.4, big.shape), 0, 1)
    _, test, _ = load_basic_motions()
    series: dict[str, np.ndarray] = {}
    for activity in ("walking", "running"):
        index = int(np.flatnonzero(np.char.lower(test.y.astype(str)) == activity)[0])
        series[activity] = test.x[index]
    pair = [[round(v / 255, 4) for v in digits["digits"][label]] for label in ("1", "7")]
    files = {
        "digits.json": (json.dumps({"inputs": pair}, separators=(",", ":")) + "\n").encode(),
        "seven.png": png(np.rint(seven * 255)),
        "seven-noisy-56.png": png(np.rint(noisy * 255)),
    }
    for activity, x in series.items():
        body = {"inputs": [np.round(x.astype(np.float64), 4).tolist()]}
        files[f"{activity}.json"] = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    files.update(sample_photos())
    return files


def main() -> int:
    digits = demo_digits()
    DIGITS_FILE.write_text(render_digits(digits))
    EXAMPLES.mkdir(exist_ok=True)
    for name, content in example_files(digits).items():
        (EXAMPLES / name).write_bytes(content)
    print(f"wrote {DIGITS_FILE} and {len(example_files(digits))} files in {EXAMPLES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
