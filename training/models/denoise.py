"""denoise: a fully convolutional denoising autoencoder (no Dense layer, so any H x W).

Trained on clean digits with Gaussian noise added and clipped to [0, 1] as inputs and the clean digits as
targets; sigmoid output, binary cross-entropy. The noise level of each training image is drawn from a range
so the model generalises across noise levels; PSNR is reported per sigma beside a 3x3 median filter and a
Gaussian blur tuned on validation, on the same noisy images.

Two 2x max-pools need H and W divisible by 4: the graph reflect-pads to a multiple of 4 and crops back, so
any size from `MIN_SIDE` up returns an image of the size it was given.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from training.baselines import add_noise, gaussian_blur, median3x3, psnr, tune_gaussian_blur
from training.common import FitResult, TrainConfig, batches, fit, predict, random_affine, seed_everything
from training.data.mnist import Split, load_mnist
from training.export import GraphSpec, TensorSpec
from training.spec import DataOptions, Gate, Trained

NAME = "denoise"
MIN_SIDE = 4
REPORT_SIGMAS = (0.1, 0.3, 0.5, 0.7)


@dataclass
class Config(TrainConfig):
    channels: int = 48
    deep_channels: int = 96  # 96 vs 48 at 1/2 and 1/4 resolution: validation PSNR +0.3 dB at equal epochs
    sigma: float = 0.5  # the headline noise level
    sigma_min: float = 0.05  # training noise is drawn per image from [sigma_min, sigma_max]
    sigma_max: float = 0.8
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5
    augment_fraction: float = 0.5


class DenoiseAE(nn.Module):
    """`channels` at full resolution, `deep_channels` at 1/2 and 1/4 (cheap there, and where capacity helps)."""

    def __init__(self, channels: int, deep_channels: int):
        super().__init__()
        c, d = channels, deep_channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, d, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(d, d, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(d, c, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (4 - h % 4) % 4, (4 - w % 4) % 4
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.net(padded)[:, :, :h, :w]


def _noisy_batch(x: torch.Tensor, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    sigma = lo + (hi - lo) * torch.rand(len(x), 1, 1, 1, generator=gen)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp_(0, 1)


def _grid_png(rows: list[np.ndarray], scale: int = 3) -> bytes:
    """Rows of [K, H, W] images side by side: noisy / denoised / clean triples."""
    tiles = [np.concatenate(list(r), axis=1) for r in rows]
    sep = np.ones((2, tiles[0].shape[1]), dtype=np.float32)
    grid = np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=0)
    img = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_digit_denoiser(
        DenoiseAE(cfg.channels, cfg.deep_channels),
        cfg,
        data,
        description="Fully convolutional denoising autoencoder for grayscale digits (any size): "
        f"trained with Gaussian noise sigma in [{cfg.sigma_min:g}, {cfg.sigma_max:g}] clipped to [0, 1]",
        min_side=MIN_SIDE,
        in_graph="reflect-pad H and W to a multiple of 4, crop the output back to the input size",
    )


def fit_denoiser(net: nn.Module, cfg: Config, data: DataOptions) -> tuple[FitResult, dict, Split, dict]:
    """Train `net` on noisy -> clean digits (BCE on its sigmoid output, the epoch with the best validation PSNR
    at `cfg.sigma` kept); returns the fit, the test PSNR per reported sigma beside the baselines, the test split
    and the data's provenance."""
    gen = seed_everything(cfg.seed, cfg.threads)
    mnist = load_mnist(data.mnist_dir, data.seed)
    train_set, val, test = mnist.train, mnist.val, mnist.test
    if cfg.quick:
        train_set, val, test = (s.head(cfg.quick_samples) for s in (train_set, val, test))
    x_train = torch.from_numpy(train_set.x[:, None])

    def train_batches(epoch: int):
        for idx in batches(len(x_train), cfg.batch_size, gen):
            clean = x_train[idx]
            if torch.rand(1, generator=gen).item() < cfg.augment_fraction:
                clean = random_affine(clean, gen, 10.0, 0.08, 0.08)
            yield _noisy_batch(clean, gen, cfg.sigma_min, cfg.sigma_max), clean

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        noisy, clean = batch
        return F.binary_cross_entropy(model(noisy), clean)

    # Validation: fixed noise at the headline sigma, so model selection is on a stable target.
    val_noisy = add_noise(val.x, cfg.sigma, seed=1000 + data.seed)

    def val_loss(model: nn.Module) -> float:
        # Negative PSNR so that lower is better.
        return -psnr(val.x, predict(model, val_noisy[:, None])[:, 0])

    steps = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    result = fit(net, train_batches, loss_fn, val_loss, cfg, steps)

    per_sigma = {}
    for i, sigma in enumerate(REPORT_SIGMAS):
        noisy_val = add_noise(val.x, sigma, seed=2000 + i)
        blur_sigma = tune_gaussian_blur(noisy_val, val.x)
        noisy = add_noise(test.x, sigma, seed=3000 + i)
        denoised = predict(net, noisy[:, None])[:, 0]
        per_sigma[f"{sigma:g}"] = {
            "model_psnr_db": psnr(test.x, denoised),
            "noisy_input_psnr_db": psnr(test.x, noisy),
            "median3x3_psnr_db": psnr(test.x, median3x3(noisy)),
            "gaussian_blur_psnr_db": psnr(test.x, gaussian_blur(noisy, blur_sigma)),
            "gaussian_blur_sigma_tuned_on_val": blur_sigma,
            "all_black_psnr_db": psnr(test.x, np.zeros_like(test.x)),
        }
    return result, per_sigma, test, mnist.provenance


def train_digit_denoiser(
    net: nn.Module,
    cfg: Config,
    data: DataOptions,
    *,
    description: str,
    min_side: int,
    in_graph: str,
    extra_metrics: dict | None = None,
) -> Trained:
    """`fit_denoiser`, then gates, samples, the exported graph and the card sections of a digit denoiser."""
    result, per_sigma, test, mnist_provenance = fit_denoiser(net, cfg, data)
    head = per_sigma.get(f"{cfg.sigma:g}")
    gates = []
    if head is not None:
        gates = [
            Gate(
                f"PSNR at sigma {cfg.sigma:g} >= 3x3 median + 5 dB",
                head["model_psnr_db"],
                head["median3x3_psnr_db"] + 5.0,
                higher_is_better=True,
            ),
            Gate(
                f"PSNR at sigma {cfg.sigma:g} > tuned Gaussian blur",
                head["model_psnr_db"],
                head["gaussian_blur_psnr_db"],
                higher_is_better=True,
            ),
        ]

    # Samples: noisy / denoised / clean for eight test digits at the headline sigma.
    noisy8 = add_noise(test.x[:8], cfg.sigma, seed=4000)
    grid = _grid_png([noisy8, predict(net, noisy8[:, None])[:, 0], test.x[:8]])

    x_spec = TensorSpec(
        "x",
        ("batch", 1, "height", "width"),
        value_range=(0.0, 1.0),
        layout=f"NCHW, 1 channel, any height and width >= {min_side}",
        description="noisy grayscale pixels in [0, 1], white ink on black as in MNIST",
    )
    y_spec = TensorSpec(
        "denoised",
        ("batch", 1, "height", "width"),
        value_range=(0.0, 1.0),
        layout="NCHW, same size as x",
        description="denoised pixels in [0, 1]",
    )
    rng = np.random.default_rng(2)
    parity = [
        (add_noise(test.x[:1, None], cfg.sigma, 5),),
        (add_noise(test.x[:7, None], cfg.sigma, 6),),
        (rng.random((3, 1, 30, 45), dtype=np.float32),),  # non-square, not a multiple of 4
        (rng.random((1, 1, 64, 52), dtype=np.float32),),
    ]
    return Trained(
        kind="denoise",
        description=description,
        tasks=["denoise"],
        graphs=[GraphSpec("full", net, [x_spec], [y_spec], parity, description="noisy image -> denoised image")],
        metrics={
            "psnr_by_sigma": per_sigma,
            "headline_sigma": cfg.sigma,
            "psnr": "mean over test images of per-image PSNR, peak 1.0",
            "test_images": len(test),
            "best_val_psnr_db": -result.best_val_loss,
            **(extra_metrics or {}),
        },
        gates=gates,
        data=mnist_provenance,
        fit=result,
        preprocessing={
            "client": "grayscale, pixel / 255, white ink on black (invert dark-on-light images); any size",
            "in_graph": in_graph,
        },
        sections={
            "input": {
                "layout": "image",
                "range": [0.0, 1.0],
                "image": {"height": None, "width": None, "channels": 1, "min_side": min_side},
                "fully_convolutional": True,
                "polarity": "white ink on a black background (invert dark-on-light scans first)",
            },
        },
        artifacts={"samples.png": grid},
    )
