"""conv-dense-latent: conv 5x5 + max-pool, flatten, a linear Dense layer to a 14x14 latent map; decoder: a
stride-2 transposed conv back to 28x28 and a final conv. Per-image standardisation (the source design's
preprocessing) is the encoder's first step, inside the exported graph, so every client gets the same answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import MnistAEConfig, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "conv-dense-latent"


@dataclass
class Config(MnistAEConfig):
    channels: int = 16
    # A 196-number linear code on 3,500 digits: augmentation cost accuracy and a longer schedule helped
    # (validation MSE 0.00319 augmented / 40 epochs, 0.00283 plain / 60, 0.00263 plain / 150).
    augment_fraction: float = 0.0
    epochs: int = 120
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


class Standardize(nn.Module):
    """Per-image zero mean, unit variance (a blank image stays all zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6)


class ConvDenseLatentAE(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(
            Standardize(),
            nn.Conv2d(1, c, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Flatten(),
            nn.Linear(c * 14 * 14, 14 * 14),  # linear code
            nn.Unflatten(1, (1, 14, 14)),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1, c, 4, stride=2, padding=1), nn.ReLU(),  # 14 -> 28
            nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="conv-dense-latent",
        description="CNN autoencoder with a dense latent: per-image standardisation, conv 5x5 + max-pool, "
        "Dense to a 14x14 latent map, stride-2 transposed conv back to 28x28, final conv, sigmoid output",
        net=ConvDenseLatentAE(cfg.channels),
        layout="image",
        latent=TensorSpec("z", ("batch", 1, 14, 14), layout="NCHW latent map 1x14x14", description="latent map"),
        latent_size=196,
        cfg=cfg,
        data=data,
        in_graph="per-image standardisation (subtract the image mean, divide by its standard deviation) "
        "as the encoder's first step",
    )
