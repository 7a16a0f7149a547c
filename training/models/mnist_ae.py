"""Shared training and evaluation of the MNIST autoencoders (dense, dense-shallow, conv, conv-dense-latent).

Inputs are pixels in [0, 1]; each net has an `encoder` and a `decoder` and a `layout`:
"vector" ([N, 784], row-major 28x28) or "image" ([N, 1, 28, 28], NCHW).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.baselines import PCA, mse, per_sample_mse
from training.common import TrainConfig, anomaly_section, batches, fit, predict, random_affine, seed_everything
from training.data.mnist import load_mnist
from training.export import GraphSpec, TensorSpec
from training.spec import DataOptions, Gate, Trained

MNIST_SHAPE = {"vector": ("batch", 784), "image": ("batch", 1, 28, 28)}
MNIST_LAYOUT = {"vector": "N x 784: a 28x28 image flattened row-major", "image": "NCHW, 1 channel, 28x28"}
PIXELS = "pixels in [0, 1] (0 = black background, 1 = white ink), as in MNIST divided by 255"
MNIST_CLIENT_PREPROCESSING = (
    "grayscale 28x28, white digit on black, pixel / 255 (MNIST's own recipe for other images: invert dark-on-light, "
    "crop to the digit, fit it in 20x20 keeping the aspect ratio, centre by mass in 28x28)"
)


@dataclass
class MnistAEConfig(TrainConfig):
    # Augmentation: small random rotations/shifts/zooms of the training digits (both input and target).
    augment_degrees: float = 10.0
    augment_translate: float = 0.08
    augment_scale: float = 0.08
    # Fraction of batches augmented: the rest are the training digits as they are.
    augment_fraction: float = 0.5


@dataclass
class Seed000Config(MnistAEConfig):
    """Seed 000's training as written: the first 3,000 images (of our training split), Keras' `Adam(lr=...)` at a
    constant rate, batch 32 (Keras' default), no augmentation."""

    train_images: int = 3000
    batch_size: int = 32
    optimizer: str = "adam"
    augment_fraction: float = 0.0


def seed000_recipe(cfg: Seed000Config) -> dict:
    """`train_mnist_autoencoder` arguments for seed 000's preprocessing and loss: each image standardised over its
    own pixels (inside the graphs), a linear output, MSE."""
    return {
        "in_graph": "per-image standardisation (mean 0, std 1 over the image's own pixels) as the encoder's first "
        "step; `full` maps the reconstruction back to pixels with the input's own mean and std",
        "loss": "mse",
        "standardize": True,
        "train_limit": cfg.train_images,
    }


class Reconstruct(nn.Module):
    """encoder -> decoder, plus the per-sample anomaly score (mean squared error over pixels)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.decoder(self.encoder(x))
        return r, (r - x).pow(2).flatten(1).mean(1)


class PerImageStandardize(nn.Module):
    """Each image to mean 0 / std 1 over its own pixels, as scikit-learn's `StandardScaler().fit_transform(X.T).T`
    does (population std; a constant image is only centred)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - _mean(x)) / _std(x)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1).reshape(-1, *([1] * (x.dim() - 1)))


def _std(x: torch.Tensor) -> torch.Tensor:
    std = (x - _mean(x)).pow(2).flatten(1).mean(1).sqrt().reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(std > 0, std, torch.ones_like(std))


class StandardizedReconstruct(nn.Module):
    """For a net trained on per-image standardised pixels with a linear output: pixels in, the reconstruction
    mapped back to pixels with the input's own mean and std, and the per-sample MSE in pixel space."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = _mean(x), _std(x)
        r = self.decoder(self.encoder((x - mean) / std)) * std + mean
        return r, (r - x).pow(2).flatten(1).mean(1)


def _shape(images: np.ndarray, layout: str) -> np.ndarray:
    return images.reshape(len(images), 784) if layout == "vector" else images[:, None, :, :]


def train_mnist_autoencoder(
    *,
    kind: str,
    description: str,
    net: nn.Module,
    layout: str,
    latent: TensorSpec,
    latent_size: int,
    cfg: MnistAEConfig,
    data: DataOptions,
    pca_gate_ratio: float | None = None,
    in_graph: str = "none",
    loss: str = "bce",
    standardize: bool = False,
    train_limit: int | None = None,
    extra_metrics: dict | None = None,
) -> Trained:
    """Train, select on validation MSE, report test MSE (pixels) beside PCA.

    `loss`: "bce" (the net ends in a sigmoid) or "mse". `standardize`: the seed 000 recipe — the net is trained
    on each image standardised over its own pixels (input and target) with a linear output; the exported encoder
    standardises first, the decoder returns standardised values, and `full` maps back to pixels with the input's
    own mean and std (`StandardizedReconstruct`). `train_limit`: only the first N images of the training split."""
    gen = seed_everything(cfg.seed, cfg.threads)
    mnist = load_mnist(data.mnist_dir, data.seed)
    train, val, test = mnist.train, mnist.val, mnist.test
    if cfg.quick:
        train, val, test = (
            train.head(cfg.quick_samples),
            val.head(cfg.quick_samples),
            test.head(cfg.quick_samples),
        )
    pca_train = train  # the baseline is fitted on the whole training split, whatever the net trains on
    if train_limit is not None:
        train = train.head(min(train_limit, len(train)))
    x_train = torch.from_numpy(train.x[:, None])  # [N, 1, 28, 28]

    def train_batches(epoch: int):
        for idx in batches(len(x_train), cfg.batch_size, gen):
            xb = x_train[idx]
            if torch.rand(1, generator=gen).item() < cfg.augment_fraction:
                xb = random_affine(xb, gen, cfg.augment_degrees, cfg.augment_translate, cfg.augment_scale)
            yield (xb.reshape(len(xb), 784) if layout == "vector" else xb,)

    if loss not in ("bce", "mse"):
        raise ValueError(f"unknown loss {loss!r}: bce or mse")
    scale = PerImageStandardize() if standardize else nn.Identity()

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        target = scale(batch[0])
        out = model.decoder(model.encoder(target))
        return F.binary_cross_entropy(out, target) if loss == "bce" else F.mse_loss(out, target)

    full = (StandardizedReconstruct if standardize else Reconstruct)(net.encoder, net.decoder)
    x_val = _shape(val.x, layout)

    def val_mse(model: nn.Module) -> float:
        return mse(predict(lambda t: model(t)[0], x_val), x_val)

    steps = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    result = fit(full, train_batches, loss_fn, val_mse, cfg, steps)

    x_test = _shape(test.x, layout)
    recon_test = predict(lambda t: full(t)[0], x_test)
    test_mse = mse(recon_test, x_test)
    pca = PCA(latent_size).fit(pca_train.x)
    pca_mse = mse(pca.reconstruct(test.x), test.x)
    val_scores = per_sample_mse(predict(lambda t: full(t)[0], x_val), x_val)
    metrics = {
        "test_mse_per_pixel": test_mse,
        "test_sse_per_image": test_mse * 784,
        "baselines": {f"pca_{latent_size}_mse_per_pixel": pca_mse},
        "ratio_to_pca": test_mse / pca_mse,
        "val_mse_per_pixel": result.best_val_loss,
        "test_images": len(test),
        "train_images": len(train),
        **(extra_metrics or {}),
    }
    if data.mnist_dir is not None:
        metrics["reference_hinton_salakhutdinov_2006"] = {
            "note": "full MNIST, 30-d code; squared error per image",
            "deep_autoencoder": 3.00,
            "pca": 13.87,
        }
    gates = []
    if pca_gate_ratio is not None:
        gates.append(Gate(f"test MSE <= {pca_gate_ratio:g} x PCA-{latent_size}", test_mse, pca_gate_ratio * pca_mse))

    shape = MNIST_SHAPE[layout]
    x_spec = TensorSpec("x", shape, value_range=(0.0, 1.0), layout=MNIST_LAYOUT[layout], description=PIXELS)
    recon_spec = TensorSpec(
        "reconstruction",
        shape,
        value_range=None if standardize else (0.0, 1.0),
        layout=MNIST_LAYOUT[layout],
        description="reconstructed pixels" + (" (a linear output: may leave [0, 1] slightly)" if standardize else ""),
    )
    decoded_spec = recon_spec
    if standardize:
        decoded_spec = TensorSpec(
            "reconstruction",
            shape,
            layout=MNIST_LAYOUT[layout],
            description="the reconstruction in standardised units (mean 0, std 1 over the image): the decoder "
            "cannot know the image's own mean and std; `reconstruct` maps back to pixels with them",
        )
    encoder_graph = nn.Sequential(PerImageStandardize(), net.encoder) if standardize else net.encoder
    score_spec = TensorSpec("score", ("batch",), description="mean squared reconstruction error per sample")
    rng = np.random.default_rng(1)
    one, odd = _shape(test.x[:1], layout), _shape(test.x[:7], layout)
    with torch.no_grad():
        z_one, z_odd = (encoder_graph(torch.from_numpy(a)).numpy() for a in (one, odd))
    graphs = [
        GraphSpec("encoder", encoder_graph, [x_spec], [latent], [(one,), (odd,)], description="pixels -> latent code"),
        GraphSpec(
            "decoder",
            net.decoder,
            [latent],
            [decoded_spec],
            [(z_one,), (z_odd,), (rng.standard_normal(z_odd.shape).astype(np.float32),)],
            description="latent code -> pixels",
        ),
        GraphSpec(
            "full",
            full,
            [x_spec],
            [recon_spec, score_spec],
            [(one,), (odd,)],
            description="pixels -> reconstruction and per-sample anomaly score",
        ),
    ]
    return Trained(
        kind=kind,
        description=description,
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=graphs,
        metrics=metrics,
        gates=gates,
        data=mnist.provenance,
        fit=result,
        preprocessing={
            "client": MNIST_CLIENT_PREPROCESSING,
            "in_graph": in_graph,
        },
        sections={
            "input": {
                "layout": layout,
                "range": [0.0, 1.0],
                "image": {"height": 28, "width": 28, "channels": 1},
            },
            "latent": {"numbers": latent_size, "shape": list(latent.shape)},
            "anomaly": anomaly_section(
                val_scores,
                "mean squared reconstruction error per sample (pixels in [0, 1])",
                "99th percentile of the validation set's scores",
            ),
        },
    )
