"""Quality of a photo denoiser on the held-out photographs, beside classical denoisers (numpy + scikit-image).

Shared by the training eval (`training/models/photo.py`, on the PyTorch model) and `bench/photo_quality.py`
(on the exported ONNX graph through ONNX Runtime), so both measure the same noisy images the same way.

A denoiser here is `fn(x, sigma) -> y`: x [N, 3, H, W] float32 in [0, 1], sigma [N] float32 (0..1 scale),
y like x. Gray photographs go in as 3 identical channels and the 3 output channels are averaged.

Noise: Gaussian of std sigma / 255, added, rounded to 8 bits, clipped to [0, 1] (as a PNG upload carries it),
from a generator seeded by (seed, photograph, sigma): every run sees the same noisy images.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from app.core.noise import estimate_sigma
from training.baselines import median3x3
from training.data.photos import Photo, add_noise

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]
GATE_SIGMAS = (15, 25, 50)
TRACK_SIGMAS = (0, 5, 15, 25, 50)
NOISE_SEED = 1234
# Chambolle TV weights tried per sigma on a training photograph (tuned, not the held-out ones).
TV_GRID = (0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.25, 0.35)


def noisy_version(photo: Photo, sigma255: float, seed: int = NOISE_SEED, index: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, index, round(sigma255 * 10)])
    return add_noise(photo.image, sigma255 / 255.0, rng, same_in_channels=not photo.is_colour)


def run_denoiser(fn: Denoiser, image: np.ndarray, sigma: float) -> np.ndarray:
    """[H, W, C] (C = 1 or 3) -> [H, W, C] through `fn` (gray: 3 identical channels in, their mean out)."""
    x = np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    y = fn(x, np.array([sigma], dtype=np.float32))[0].transpose(1, 2, 0)
    return y.mean(axis=2, keepdims=True) if image.shape[2] == 1 else y


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    err = float(np.mean((clean.astype(np.float64) - np.clip(other, 0, 1).astype(np.float64)) ** 2))
    return float(10 * np.log10(1.0 / max(err, 1e-12)))


def ssim(clean: np.ndarray, other: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    a, b = clean.astype(np.float64), np.clip(other, 0, 1).astype(np.float64)
    if a.shape[2] == 1:
        return float(structural_similarity(a[:, :, 0], b[:, :, 0], data_range=1.0))
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=2))


def bm3d_available() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def classical(name: str, noisy: np.ndarray, sigma: float, tv_weight: float | None = None) -> np.ndarray:
    """A classical denoiser on [H, W, C]; `sigma` on the 0..1 scale (the true one)."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    colour = noisy.shape[2] == 3
    img = noisy if colour else noisy[:, :, 0]
    axis = -1 if colour else None
    if name == "median3x3":
        return median3x3(noisy.transpose(2, 0, 1)).transpose(1, 2, 0)
    if name == "nl_means":
        # scikit-image's documented settings for a known sigma (fast mode).
        out = denoise_nl_means(
            img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=axis
        )
    elif name == "wavelet":
        out = denoise_wavelet(
            img, sigma=sigma, channel_axis=axis, convert2ycbcr=colour, method="BayesShrink", mode="soft",
            rescale_sigma=True,
        )  # fmt: skip
    elif name == "tv":
        out = denoise_tv_chambolle(img, weight=tv_weight if tv_weight is not None else sigma, channel_axis=axis)
    elif name == "bm3d":
        import bm3d  # non-commercial licence: never a project dependency, only used when installed by hand

        out = bm3d.bm3d_rgb(img, sigma_psd=sigma) if colour else bm3d.bm3d(img, sigma_psd=sigma)
    else:
        raise ValueError(f"unknown classical denoiser {name!r}")
    out = np.asarray(out, dtype=np.float32)
    return out if colour else out[:, :, None]


def tune_tv_weights(tune_photos: list[Photo], sigmas: tuple[int, ...], crop: int = 256) -> dict[int, float]:
    """The Chambolle weight with the best PSNR per sigma on central crops of training photographs."""
    weights = {}
    for s in sigmas:
        best, best_w = -np.inf, TV_GRID[0]
        for w in TV_GRID:
            score = 0.0
            for i, p in enumerate(tune_photos):
                h, w_ = p.image.shape[:2]
                y, x = max(0, (h - crop) // 2), max(0, (w_ - crop) // 2)
                clean = Photo(p.name, p.image[y : y + crop, x : x + crop])
                noisy = noisy_version(clean, s, seed=NOISE_SEED + 1, index=i)
                score += psnr(clean.image, classical("tv", noisy, s / 255.0, tv_weight=w))
            if score > best:
                best, best_w = score, w
        weights[s] = best_w
    return weights


def evaluate(
    fn: Denoiser,
    photos: list[Photo],
    sigmas: tuple[int, ...] = GATE_SIGMAS,
    methods: tuple[str, ...] = ("median3x3", "nl_means", "wavelet", "tv"),
    tv_weights: dict[int, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """PSNR/SSIM per sigma, per photo and averaged per kind (gray, colour), for the model (blind: sigma from
    `app.core.noise.estimate_sigma`; given: the true sigma), the noisy input and each classical method (true sigma)."""
    per_photo: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for s in sigmas:
        for index, photo in enumerate(photos):
            noisy = noisy_version(photo, s, index=index)
            est = estimate_sigma(noisy[:, :, 0] if not photo.is_colour else noisy)
            outputs = {}
            t = time.perf_counter()
            outputs["model_blind"] = run_denoiser(fn, noisy, est)
            seconds["model_blind"] = seconds.get("model_blind", 0.0) + time.perf_counter() - t
            outputs["model_given_sigma"] = run_denoiser(fn, noisy, s / 255.0)
            outputs["noisy_input"] = noisy
            for m in methods:
                t = time.perf_counter()
                outputs[m] = classical(m, noisy, s / 255.0, (tv_weights or {}).get(s))
                seconds[m] = seconds.get(m, 0.0) + time.perf_counter() - t
            per_photo.setdefault(str(s), {})[photo.name] = {
                "estimated_sigma_255": est * 255.0,
                **{k: {"psnr_db": psnr(photo.image, v), "ssim": ssim(photo.image, v)} for k, v in outputs.items()},
            }
            if log:
                row = per_photo[str(s)][photo.name]
                log(
                    f"sigma {s} {photo.name}: "
                    + ", ".join(f"{k} {v['psnr_db']:.2f}" for k, v in row.items() if isinstance(v, dict))
                )
    by_kind: dict[str, dict] = {}
    for s, rows in per_photo.items():
        for kind, names in (("gray", [p.name for p in photos if not p.is_colour]),
                            ("colour", [p.name for p in photos if p.is_colour])):  # fmt: skip
            if not names:
                continue
            methods_here = [k for k, v in rows[names[0]].items() if isinstance(v, dict)]
            by_kind.setdefault(s, {})[kind] = {
                m: {
                    "psnr_db": float(np.mean([rows[n][m]["psnr_db"] for n in names])),
                    "ssim": float(np.mean([rows[n][m]["ssim"] for n in names])),
                }
                for m in methods_here
            }
            by_kind[s][kind]["photos"] = names
    return {"by_sigma": by_kind, "per_photo": per_photo, "seconds": seconds}


def sigma_tracking(photos: list[Photo], sigmas: tuple[int, ...] = TRACK_SIGMAS) -> dict:
    """`app.core.noise.estimate_sigma` on the noisy photographs (the same noisy images as `evaluate`), in 1/255."""
    out: dict[str, dict] = {}
    for s in sigmas:
        row = {}
        for index, photo in enumerate(photos):
            noisy = noisy_version(photo, s, index=index)
            row[photo.name] = estimate_sigma(noisy[:, :, 0] if not photo.is_colour else noisy) * 255.0
        errors = np.array([v - s for v in row.values()])
        out[str(s)] = {
            "estimates": row,
            "mean_error": float(errors.mean()),
            "mean_abs_error": float(np.abs(errors).mean()),
            "max_abs_error": float(np.abs(errors).max()),
        }
    return out


def markdown_table(result: dict, title: str = "") -> str:
    """PSNR (dB) / SSIM per sigma and kind, one column per method."""
    lines = [f"### {title}", ""] if title else []
    for s, kinds in result["by_sigma"].items():
        for kind, methods in kinds.items():
            names = [m for m in methods if m != "photos"]
            lines += [
                f"**σ = {s}, {kind}** ({', '.join(methods['photos'])})",
                "",
                "| method | PSNR dB | SSIM |",
                "|---|---|---|",
                *(f"| {m} | {methods[m]['psnr_db']:.2f} | {methods[m]['ssim']:.4f} |" for m in names),
                "",
            ]
    return "\n".join(lines)
