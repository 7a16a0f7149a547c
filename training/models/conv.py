"""conv: convolutional pyramid (conv + max-pool twice) to a small latent feature map; the decoder upsamples
with nearest-neighbour + conv (no transposed conv, so no checkerboard artifacts); sigmoid output."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import MnistAEConfig, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "conv"


@dataclass
class Config(MnistAEConfig):
    channels: int = 32
    latent_channels: int = 2  # latent map 2 x 7 x 7 = 98 numbers (1/8 of the pixels)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5


class ConvAE(nn.Module):
    def __init__(self, channels: int, latent_channels: int):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.Conv2d(c, latent_channels, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 7 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 14 -> 28
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip


def train(cfg: Config, data: DataOptions) -> Trained:
    k = cfg.latent_channels
    return train_mnist_autoencoder(
        kind="conv",
        description=f"Convolutional MNIST autoencoder: conv + max-pool twice to a {k}x7x7 latent map, "
        "nearest-neighbour upsampling + conv decoder, sigmoid output",
        net=ConvAE(cfg.channels, k),
        layout="image",
        latent=TensorSpec("z", ("batch", k, 7, 7), layout=f"NCHW latent map {k}x7x7", description="latent map"),
        latent_size=k * 49,
        cfg=cfg,
        data=data,
    )
