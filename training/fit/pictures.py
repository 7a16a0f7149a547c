"""Fit images: a dense or convolutional autoencoder on pixels in [0, 1] at the working size, measured beside PCA-K.

The images are split at random (seeded) into train / validation / test; the network learns the pixels' mean
squared error and is selected on the validation images; PCA with K components is fitted on the same training
images and measured on the same test images (its reconstructions clipped to [0, 1], the pixels' range). The
anomaly score is an image's mean squared error per pixel.
`--pca-if-better` exports that PCA instead (a linear autoencoder with the same graphs) when it is not worse than
the network on the validation images.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from training.data.errors import DataError
from training.export import GraphSpec, TensorSpec
from training.fit.choice import choice_metrics, export_line, pca_wins
from training.fit.clean import split_rows, split_text
from training.fit.distributed import World
from training.fit.images import ImageSet, image_files, is_idx_images, read_idx_images, read_image_folder
from training.fit.loop import settings_for, train_autoencoder
from training.fit.metrics import errors, threshold_section
from training.fit.nets import Autoencoder, conv_images, dense_images, linear_images
from training.fit.options import FitOptions
from training.fit.pca import fit_pca
from training.fit.progress import Progress
from training.fit.summary import Fitted, verdict
from training.spec import Gate, Trained


def default_latent(values: int) -> int:
    return max(2, min(32, values // 8))


def default_hidden(values: int, arch: str) -> int:
    """Dense: units (a third of the values, 64..512); conv: the first stage's channels."""
    return 16 if arch == "conv" else max(64, min(512, values // 3))


def _read(opts: FitOptions) -> ImageSet:
    path = opts.data
    if path.is_dir() and image_files(path):
        return read_image_folder(path, opts.size, opts.channels, opts.arch)
    if path.is_dir() or is_idx_images(path):
        return read_idx_images(path, opts.size, opts.channels, opts.arch)
    raise DataError(f"{path}: images are a folder of PNG/JPEG files, or MNIST IDX image files (or a folder of them)")


def _sizes_text(native: Counter) -> str:
    common = ", ".join(f"{w}x{h}" + (f" ({n})" if len(native) > 1 else "") for (h, w), n in native.most_common(3))
    return common + (f" and {len(native) - 3} other sizes" if len(native) > 3 else "")


def _psnr(per_image_mse: np.ndarray) -> float:
    return float(np.mean(10 * np.log10(1.0 / np.maximum(per_image_mse, 1e-12))))


def _graphs(model: Autoencoder, channels: int, side: int, k: int, sample: np.ndarray) -> list[GraphSpec]:
    shape = ("batch", channels, side, side)
    layout = f"NCHW, {channels} channel(s), {side}x{side}"
    x = TensorSpec("x", shape, value_range=(0.0, 1.0), layout=layout, description="pixels in [0, 1]")
    z = TensorSpec("z", ("batch", k), layout=f"N x {k}", description=f"latent code ({k} numbers)")
    r = TensorSpec("reconstruction", shape, value_range=(0.0, 1.0), layout=layout, description="reconstructed pixels")
    s = TensorSpec("score", ("batch",), description="mean squared reconstruction error per image (pixels in [0, 1])")
    one, odd = sample[:1], sample[:5]
    with torch.no_grad():
        z_one, z_odd = (model.encoder(torch.from_numpy(a)).numpy() for a in (one, odd))
    noise = np.random.default_rng(1).standard_normal(z_odd.shape).astype(np.float32)
    # TorchScript exporter: seconds faster than dynamo per graph; the export's checks hold either way.
    return [
        GraphSpec("encoder", model.encoder, [x], [z], [(one,), (odd,)], dynamo=False, description="images -> codes"),
        GraphSpec(
            "decoder",
            model.decoder,
            [z],
            [r],
            [(z_one,), (z_odd,), (noise,)],
            dynamo=False,
            description="codes -> images",
        ),
        GraphSpec(
            "full", model, [x], [r, s], [(one,), (odd,)], dynamo=False, description="images -> reconstruction, score"
        ),
    ]


def fit_images(opts: FitOptions, progress: Progress, world: World) -> Fitted:
    """Read, split, train, measure beside PCA and describe the model (see the module docstring)."""
    images = _read(opts)
    n, channels, side = len(images.x), images.x.shape[1], images.x.shape[2]
    progress.note(
        f"read {n} images ({images.format}; {_sizes_text(images.native_sizes)}) -> {channels} x {side} x {side}"
    )
    if opts.arch == "conv" and side % 4:
        raise ValueError(f"--arch conv needs a side that is a multiple of 4; pass --size (e.g. {side + 4 - side % 4})")
    values = channels * side * side
    k = opts.latent if opts.latent is not None else default_latent(values)
    if k >= values:
        raise ValueError(f"--latent {k}: the code must be smaller than the {values} pixel values of an image")
    splits = split_rows(n, opts.split, opts.seed, str(opts.data), unit="images", min_train=k)
    x_train, x_val, x_test = (images.x[idx] for idx in (splits.train, splits.val, splits.test))
    fmt, native = images.format, images.native_sizes
    del images
    hidden = opts.hidden if opts.hidden is not None else default_hidden(values, opts.arch)
    torch.manual_seed(opts.seed)
    if opts.arch == "conv":
        model = conv_images(channels, side, hidden, k)
        arch = f"conv {channels}->{hidden}->{2 * hidden} channels, pools to {side // 4}x{side // 4}, dense code {k}"
    else:
        model = dense_images(channels, side, hidden, k)
        arch = f"dense {values}-{hidden}-{k}-{hidden}-{values}"
    xt = torch.from_numpy(x_train)
    settings = settings_for(opts, len(xt))
    result = train_autoencoder(model, xt, x_val, settings, progress, world)
    val, test = errors(model, x_val), errors(model, x_test)
    pca = fit_pca(x_train, k, seed=opts.seed)
    # Measured through the module `--pca-if-better` exports: PCA with its reconstructions clipped to [0, 1].
    pca_model = linear_images(channels, side, pca.components, pca.centre)
    base_val, base_test = errors(pca_model, x_val), errors(pca_model, x_test)
    pca_val, pca_test = base_val.scores, base_test.scores
    use_pca = pca_wins(opts.pca_if_better, base_val.mse, val.mse)
    chosen = pca_model if use_pca else model
    c_val, c_test = (base_val, base_test) if use_pca else (val, test)
    anomaly = threshold_section(
        c_val.scores, opts.quantile, "mean squared reconstruction error per image (pixels in [0, 1])", "images"
    )
    test_above = float((c_test.scores > anomaly["threshold"]).mean())
    anomaly["test_fraction_above_threshold"] = test_above
    pca_name = f"PCA-{k}"
    split = (
        f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images "
        f"({split_text(opts.split)}, random, seed {opts.seed})"
    )
    pca_test_mse = float(pca_test.mean())
    metrics: dict[str, Any] = {
        "test_mse_per_pixel": c_test.mse,
        "val_mse_per_pixel": c_val.mse,
        "test_psnr_db": _psnr(c_test.scores),
        "baselines": {f"pca_{k}_mse_per_pixel": pca_test_mse},
        "ratio_to_pca": c_test.mse / max(pca_test_mse, 1e-300),
        "autoencoder": {
            "architecture": arch,
            "test_mse_per_pixel": test.mse,
            "val_mse_per_pixel": val.mse,
            "test_psnr_db": _psnr(test.scores),
        },
        "pca": {
            "components": k,
            "explained_variance": pca.explained_variance,
            "val_mse_per_pixel": float(pca_val.mean()),
            "test_mse_per_pixel": pca_test_mse,
            "test_psnr_db": _psnr(pca_test),
        },
        "autoencoder_beats_pca": {
            "test": bool(test.mse < pca_test_mse),
            "validation": bool(val.mse < pca_val.mean()),
        },
        **choice_metrics(opts.pca_if_better, use_pca),
        "test_images": len(x_test),
    }
    colour = "RGB" if channels == 3 else "gray (BT.601 luma, alpha over black)"
    network = f"{'Convolutional' if opts.arch == 'conv' else 'Dense'} image autoencoder ({arch})"
    what = f"{pca_name} as a linear autoencoder (pixels -> {k} -> pixels clipped to [0, 1])" if use_pca else network
    trained = Trained(
        kind="fit-pca-images" if use_pca else f"fit-{opts.arch}-images",
        description=f"{what} fitted on {opts.data.name}: {side}x{side} {'colour' if channels == 3 else 'gray'} images",
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=_graphs(chosen, channels, side, k, x_test),
        metrics=metrics,
        gates=[Gate(f"test MSE <= {pca_name}", c_test.mse, pca_test_mse)],
        data={
            "source": str(opts.data),
            "format": fmt,
            "images": n,
            "native_sizes": {f"{w}x{h}": c for (h, w), c in native.most_common()},
            "split": split,
        },
        fit=result,
        preprocessing={
            "client": f"{colour} pixels / 255, resized bilinearly to {side}x{side} (image uploads: the service does "
            "this itself)",
            "in_graph": "none",
        },
        sections={
            "input": {
                "layout": "image",
                "range": [0.0, 1.0],
                "image": {"height": side, "width": side, "channels": channels},
            },
            "latent": {"numbers": k, "shape": ["batch", k]},
            "anomaly": anomaly,
        },
    )
    summary = [
        f"data: {n} images -> {channels}x{side}x{side}; {split}",
        f"autoencoder ({arch}): test MSE {test.mse:.4g} per pixel, PSNR {metrics['autoencoder']['test_psnr_db']:.2f} "
        f"dB (validation {val.mse:.4g})",
        f"{pca_name} ({pca.explained_variance:.1%} of the variance, clipped to [0, 1]): test MSE {pca_test_mse:.4g} "
        f"per pixel, PSNR {metrics['pca']['test_psnr_db']:.2f} dB (validation {pca_val.mean():.4g})",
        verdict("autoencoder", test.mse, pca_name, pca_test_mse),
    ]
    line = export_line(opts.pca_if_better, use_pca, pca_name, test.mse < pca_test_mse)
    summary.extend([line] if line else [])
    summary.append(
        f"anomaly threshold {anomaly['threshold']:.4g} ({anomaly['threshold_rule']}); "
        f"{test_above:.1%} of the test images are above it"
    )
    return Fitted(trained, summary, {"batch_size": settings.batch_size})
