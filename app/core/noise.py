"""Blind estimate of the standard deviation of additive white Gaussian noise in an image (numpy only).

Shared by the service (when a caller does not give the noise level of a `photo` denoise request) and by
training (`training/models/photo.py` measures it and trains the network to tolerate its errors), so both sides
estimate sigma the same way.

Method (per channel): Immerkaer's fast noise variance estimation ("Fast noise variance estimation", CVIU 1996),
made robust in two ways:

- the 3x3 mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] / 6 (unit gain for white noise) cancels constant and
  linear image content; the scale of its response is measured with the median absolute value (MAD / 0.6745)
  instead of the mean, so strong edges and texture pull the estimate up less;
- clipping at 0 and 1 shrinks the noise near black and white: responses where the local 5x5 mean lies within
  `CLIP_MARGIN` x sigma of 0 or 1 are left out, sigma being the previous estimate (two rounds). Selecting by the
  local mean rather than by the clipped pixels themselves does not bias the estimate low (measured on the
  training photographs at sigma = 50: mean error -5.9/255 with no fix, -4.6 when dropping responses that touch
  a clipped pixel, +0.2 with this rule). If too few responses remain (e.g. a digit on a black background), all
  are used;
- responses on the strongest edges (the top `edge_fraction` of a Sobel gradient magnitude) are left out.

8-bit rounding adds variance 1/12 (in units of 1/255) to the noise; it is subtracted when the image is 8-bit
(every pixel a multiple of 1/255), because the denoiser's sigma is that of the Gaussian before rounding.

Pixels are in [0, 1]; the estimate is in the same units (sigma / 255 for 8-bit images).
"""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.0 / 0.6744897501960817  # 1 / Phi^-1(3/4): MAD of N(0, 1) is 0.6745
EDGE_FRACTION = 0.2
CLIP_MARGIN = 2.0
MIN_VALID = 256  # fewer unclipped responses than this: use them all
QUANT_VAR_8BIT = 1.0 / (12.0 * 255.0**2)
MAX_SAMPLE_PIXELS = 1 << 20  # per channel: larger channels are estimated on a grid of blocks
SAMPLE_BLOCK = 256


def _conv3x3_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    h, w = x.shape
    out = np.zeros((h - 2, w - 2), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            if kernel[i, j] != 0:
                out += kernel[i, j] * x[i : i + h - 2, j : j + w - 2]
    return out


_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64) / 6.0
_SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)


def _is_8bit(x: np.ndarray) -> bool:
    scaled = x * 255.0
    return bool(np.all(np.abs(scaled - np.round(scaled)) < 1e-3))


def _box5_same(x: np.ndarray) -> np.ndarray:
    """5x5 mean of an [H, W] array, aligned with `_conv3x3_valid`'s output ([H - 2, W - 2], edges repeated)."""
    c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), axis=0), axis=1)
    mean = (c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]) / 25.0
    return np.pad(mean, 1, mode="edge")


def _blocks(x: np.ndarray, max_pixels: int) -> list[np.ndarray]:
    """The channel itself when it holds at most `max_pixels`, else a grid of `SAMPLE_BLOCK`-pixel squares spread
    evenly over it, `max_pixels` in all: the estimate of a 24-megapixel photograph costs what a 1-megapixel one
    does (its float64 work arrays are ~60 bytes per pixel) and noise statistics need no more."""
    h, w = x.shape
    if h * w <= max_pixels or min(h, w) < SAMPLE_BLOCK:
        return [x]
    count = max(1, max_pixels // (SAMPLE_BLOCK * SAMPLE_BLOCK))
    rows = max(1, min(count, round(float(np.sqrt(count * h / w)))))
    cols = max(1, count // rows)
    ys = np.linspace(0, h - SAMPLE_BLOCK, rows).round().astype(int)
    xs = np.linspace(0, w - SAMPLE_BLOCK, cols).round().astype(int)
    return [x[y : y + SAMPLE_BLOCK, c : c + SAMPLE_BLOCK] for y in ys for c in xs]


def estimate_sigma_channel(
    x: np.ndarray, edge_fraction: float = EDGE_FRACTION, max_pixels: int = MAX_SAMPLE_PIXELS
) -> float:
    """Noise sigma of one 2-D channel with values in [0, 1]; 0.0 for images smaller than 5x5. Channels above
    `max_pixels` are estimated on a grid of blocks holding that many pixels."""
    if np.ndim(x) != 2:
        raise ValueError(f"expected a 2-D channel, got shape {np.shape(x)}")
    if x.shape[0] < 5 or x.shape[1] < 5:
        return 0.0
    blocks = [np.asarray(b, dtype=np.float64) for b in _blocks(np.asarray(x), max_pixels)]
    response = np.concatenate([np.abs(_conv3x3_valid(b, _LAPLACE)).ravel() for b in blocks])
    local_mean = np.concatenate([_box5_same(b).ravel() for b in blocks])
    valid = np.ones(response.shape, dtype=bool)
    sigma = float(np.median(response)) * MAD_TO_SIGMA
    for _ in range(2):
        away = (local_mean > CLIP_MARGIN * sigma) & (local_mean < 1.0 - CLIP_MARGIN * sigma)
        if away.sum() < MIN_VALID:
            break
        valid = away
        sigma = float(np.median(response[valid])) * MAD_TO_SIGMA
    if edge_fraction > 0:
        grad = np.concatenate(
            [np.hypot(_conv3x3_valid(b, _SOBEL_X), _conv3x3_valid(b, _SOBEL_X.T)).ravel() for b in blocks]
        )
        not_edge = valid & (grad <= np.quantile(grad[valid], 1.0 - edge_fraction))
        if not_edge.sum() >= MIN_VALID:
            valid = not_edge
    sigma = float(np.median(response[valid])) * MAD_TO_SIGMA
    if all(_is_8bit(b) for b in blocks):
        sigma = float(np.sqrt(max(sigma * sigma - QUANT_VAR_8BIT, 0.0)))
    return sigma


def estimate_sigma(image: np.ndarray, channel_axis: int | None = None, edge_fraction: float = EDGE_FRACTION) -> float:
    """Noise sigma of an image in [0, 1]: 2-D, or 3-D with its channels on `channel_axis` (default: last).

    The channels of a colour image are estimated separately and the median is returned (the denoiser takes one
    sigma for all channels). A gray image given as identical channels gives that channel's estimate.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return estimate_sigma_channel(image, edge_fraction)
    if image.ndim != 3:
        raise ValueError(f"expected a 2-D image or a 3-D image with channels, got shape {image.shape}")
    channels = np.moveaxis(image, -1 if channel_axis is None else channel_axis, 0)
    return float(np.median([estimate_sigma_channel(c, edge_fraction) for c in channels]))
