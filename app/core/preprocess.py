"""What happens to an uploaded image before a model sees it.

- `none`: the pixels as decoded (the size must already be the model's, unless it is fully convolutional);
- `resize`: bilinear resize to the model's input size (the default for fixed-size models);
- `mnist`: the MNIST recipe, so a photo or scan of a digit looks like the digits the models learnt:
  invert when the digit is dark on light (decided from the border), remove the background level, stretch the
  contrast, crop to the digit, fit it in 20x20 keeping its aspect ratio, and centre it by mass in 28x28.
Every step taken is reported back to the client.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from app.core.errors import InvalidInput
from app.core.images import resize

Preprocess = Literal["auto", "none", "resize", "mnist"]

MNIST_SIDE = 28
MNIST_BOX = 20
_INK_THRESHOLD = 0.2  # of the stretched range: what counts as the digit when cropping


def border(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels (about 5% of each side, at least one pixel)."""
    h, w = pixels.shape
    k = max(1, round(min(h, w) * 0.05))
    return np.concatenate([pixels[:k].ravel(), pixels[-k:].ravel(), pixels[:, :k].ravel(), pixels[:, -k:].ravel()])


def is_dark_on_light(pixels: np.ndarray) -> bool:
    """MNIST digits are white ink on black: a light border means the image needs inverting."""
    return float(np.median(border(pixels))) > 0.5


def mnist_recipe(pixels: np.ndarray, invert: bool | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Any grayscale [H, W] image in [0, 1] -> a 28x28 MNIST-style digit, and what was done to it."""
    inverted = is_dark_on_light(pixels) if invert is None else invert
    x = 1.0 - pixels if inverted else pixels.copy()
    background = float(np.median(border(x)))
    x = np.clip(x - background, 0.0, None)
    peak = float(x.max())
    if peak <= 1e-6:
        raise InvalidInput(
            "preprocess=mnist found no digit: the image is uniform after removing its background",
            {"field": "file", "background": background},
        )
    x = (x / peak).astype(np.float32)
    rows = np.flatnonzero((x > _INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((x > _INK_THRESHOLD).any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    digit = x[top:bottom, left:right]
    h, w = digit.shape
    scale = MNIST_BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    digit = resize(digit, new_h, new_w)
    mass = float(digit.sum())
    if mass > 0:
        cy = float((digit.sum(axis=1) * np.arange(new_h)).sum() / mass)
        cx = float((digit.sum(axis=0) * np.arange(new_w)).sum() / mass)
    else:
        cy, cx = (new_h - 1) / 2, (new_w - 1) / 2
    centre = (MNIST_SIDE - 1) / 2
    off_y = int(np.clip(round(centre - cy), 0, MNIST_SIDE - new_h))
    off_x = int(np.clip(round(centre - cx), 0, MNIST_SIDE - new_w))
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    out[off_y : off_y + new_h, off_x : off_x + new_w] = digit
    report = {
        "preprocess": "mnist",
        "inverted": bool(inverted),
        "background": round(background, 6),
        "crop_box": [left, top, right, bottom],
        "digit_size": [new_w, new_h],
        "offset": [off_x, off_y],
        "model_size": [MNIST_SIDE, MNIST_SIDE],
    }
    return out, report


def prepare_image(
    pixels: np.ndarray,
    mode: Preprocess,
    target: tuple[int, int] | None,
    min_side: int,
    invert: bool | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the chosen preprocessing for a model whose input is `target` (H, W), or any size when None."""
    if mode == "auto":
        mode = "resize" if target is not None else "none"
    if mode == "mnist":
        out, recipe = mnist_recipe(pixels, invert)
        if target is not None and target != out.shape:
            out = resize(out, *target)
            recipe["model_size"] = [target[1], target[0]]
        return out, recipe
    inverted = bool(invert)
    x = 1.0 - pixels if inverted else pixels
    h, w = x.shape
    report: dict[str, Any] = {"preprocess": mode, "inverted": inverted}
    if target is not None and (h, w) != target:
        if mode == "none":
            raise InvalidInput(
                f"image is {w}x{h} but the model takes {target[1]}x{target[0]}; use preprocess=resize or "
                "preprocess=mnist",
                {"field": "file", "size": [w, h], "model_size": [target[1], target[0]]},
            )
        x = resize(x, *target)
        report["resized"] = {"from": [w, h], "to": [target[1], target[0]], "method": "bilinear"}
    elif min(h, w) < min_side:
        raise InvalidInput(
            f"image is {w}x{h}; the model needs at least {min_side} pixels per side",
            {"field": "file", "size": [w, h], "min_side": min_side},
        )
    report["model_size"] = [x.shape[1], x.shape[0]]
    return x.astype(np.float32, copy=False), report
