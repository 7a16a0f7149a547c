"""`python -m tests.deploy.models_doc`: the README's model table — what each model is (written here) beside its
measured quality, copied from `models/README.md` (which training writes from the cards). test_readme.py checks
that the README's table is this one, so a retrained model cannot leave stale numbers in the README."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.deploy.readme_sections import replace_section

REPO = Path(__file__).resolve().parents[2]
MODELS_README = REPO / "models" / "README.md"

# What each model is and what it takes (the architecture; the numbers come from models/README.md).
DESCRIPTIONS = {
    "dense": (
        "784 → 256 → 32 → 256 → 784, ReLU, sigmoid output: latent codes for dimensionality reduction",
        "MNIST vectors `[N, 784]`, pixels in [0, 1]",
    ),
    "dense-shallow": ("the simplest autoencoder: one ReLU layer of 32 as the code", "`[N, 784]`"),
    "conv": (
        "conv + max-pool twice to a 2×7×7 latent map (98 numbers); nearest-neighbour upsample + conv decoder "
        "(no checkerboard)",
        "`[N, 1, 28, 28]`",
    ),
    "conv-dense-latent": (
        "per-image standardisation, conv 5×5 + pool, Dense to a 14×14 latent map, stride-2 transposed conv, conv",
        "`[N, 1, 28, 28]`",
    ),
    "denoise": (
        "fully convolutional denoiser trained on clipped Gaussian noise (σ drawn from a range), BCE",
        "`[N, 1, H, W]`, any H, W ≥ 4",
    ),
    "lstm": (
        "bidirectional-LSTM sequence autoencoder, 6 channels → 3 latent features per step",
        "`[N, T, 6]` raw sensor units",
    ),
    "lstm-anomaly": (
        'the same network fitted one-class (BasicMotions "Walking"): anomaly scores + threshold',
        "`[N, T, 6]`",
    ),
    "lstm-forecast": (
        '"reduce and predict": BiLSTM (concat), dropout, dense 64, next step of every channel',
        "`[N, T, 6]`",
    ),
    "dense-seed": (
        "seed 000 as written: each image standardised over its own pixels, 784 → 256 → 32 ReLU → 256 → 784 linear, "
        "MSE, Adam 0.01, 3,000 images",
        "`[N, 784]` pixels (standardised inside the graph)",
    ),
    "conv-dense-latent-seed": (
        "seed 000's CNN as written: conv 10 5×5, max-pool 5×5 stride 1, Dense 196 to 14×14, transposed conv, "
        "conv 4×4 linear, MSE",
        "`[N, 1, 28, 28]`",
    ),
    "conv-seed": (
        "seed 003's convolutional pyramid: conv 16/8/8 with 2×2 pools to 4×4×8, nearest upsample + conv 8/8/16, "
        "sigmoid, cross-entropy",
        "`[N, 1, 28, 28]`",
    ),
    "noise-cancel-seed": (
        "seed 000's noise canceller: conv 10 3×3, max-pool 2×2 stride 1, transposed conv 10 3×3, conv + sigmoid",
        "`[N, 1, H, W]`, any size",
    ),
    "lstm-seed": (
        "seed 000's LSTM autoencoder: two bidirectional LSTMs (sum merge), per-step Dense; 3 features per step",
        "`[N, T, 6]` raw sensor units",
    ),
    "lstm-forecast-seed": (
        "seed 000's reduce-and-predict: BiLSTM (concat), dropout 0.1, dense 64 ReLU, dropout 0.1, dense",
        "`[N, T, 6]`",
    ),
    "photo": (
        "photograph denoiser behind `/v1/denoise`: pixel-unshuffle + noise-level map, 6 residual blocks of 64 "
        "channels, predicts the noise; blind (σ estimated) or given σ; gray and colour; large images in tiles",
        "`x` `[N, 3, H, W]` (gray as 3 equal channels) + `sigma` `[N]`; PNG/JPEG/WebP uploads up to 24 MP",
    ),
}


def measured() -> dict[str, tuple[str, str]]:
    """(measure, result) per model, from models/README.md's table."""
    rows = {}
    for line in MODELS_README.read_text().splitlines():
        if line.startswith("## "):  # the first table only (the seed comparison follows under its own heading)
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if len(cells) >= 4 else None
        if match:
            rows[match.group(1)] = (cells[2], cells[3])
    return rows


def table() -> str:
    lines = [
        "| model | what it is | input | measure (held-out test data) | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (measure, result) in measured().items():
        what, shape = DESCRIPTIONS.get(name, ("(not described in tests/deploy/models_doc.py)", "see its card"))
        lines.append(f"| `{name}` | {what} | {shape} | {measure} | {result} |")
    return "\n".join(lines)


def replace_table(readme: str) -> str:
    return replace_section(readme, "models-table", table())


def main() -> int:
    readme = REPO / "README.md"
    readme.write_text(replace_table(readme.read_text()))
    print(f"updated the model table in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
