"""`python -m tests.browser.demo_digits`: write `app/static/digits.json`, the ten sample digits of the demo page.

One held-out digit per class: the first image of each label in the MNIST test split the models were evaluated on
(`training.data.mnist.load_mnist`, seed 0), as 0-255 integers. A test checks the committed file against this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.data.mnist import load_mnist

DIGITS_FILE = Path(__file__).resolve().parents[2] / "app" / "static" / "digits.json"


def demo_digits() -> dict[str, Any]:
    """The file's content: provenance and one 28x28 digit per class, row-major, 0-255."""
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


def render(content: dict[str, Any]) -> str:
    """One digit per line, so the file stays readable in a diff."""
    head = {k: v for k, v in content.items() if k != "digits"}
    lines = [json.dumps(head)[:-1] + ', "digits": {']
    items = list(content["digits"].items())
    for i, (label, pixels) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f'  "{label}": {json.dumps(pixels, separators=(",", ":"))}{comma}')
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main() -> int:
    DIGITS_FILE.write_text(render(demo_digits()))
    print(f"wrote {DIGITS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
