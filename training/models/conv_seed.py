"""conv-seed: seed 003's convolutional autoencoder (the "convolutional pyramid"), served beside our `conv`.

    encoder: Conv 3x3 16 ReLU, max-pool 2x2 'same' (28 -> 14); Conv 3x3 8 ReLU, pool (14 -> 7);
             Conv 3x3 8 ReLU, pool 'same' (7 -> 4): a 4x4x8 code
    decoder: nearest-neighbour resize to 7x7, Conv 3x3 8 ReLU; resize to 14x14, Conv 3x3 8 ReLU;
             resize to 28x28, Conv 3x3 16 ReLU; Conv 3x3 1 (logits) -> sigmoid
    sigmoid cross-entropy; Adam(1e-3); pixels in [0, 1]

The seed gives the layers and the loss; its batch size and epochs are not given (ours). TensorFlow's 'same'
pooling of 7 pads the end (= `ceil_mode`); its nearest-neighbour resize takes floor(i x in / out) (= PyTorch's
`nearest`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.export import TensorSpec
from training.models.mnist_ae import MnistAEConfig, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "conv-seed"
SEED = "seed 003 (shared/seeds/003_*.txt), 'Convolutional Autoencoder'"


@dataclass
class Config(MnistAEConfig):
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    augment_fraction: float = 0.0


class Resize(nn.Module):
    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.side, self.side), mode="nearest")


class ConvSeedAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # 28 -> 14
            nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # 14 -> 7
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # 7 -> 4
        )  # fmt: skip
        self.decoder = nn.Sequential(
            Resize(7), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            Resize(14), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            Resize(28), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="conv",
        description="Seed 003's convolutional pyramid as written: conv 16/8/8 3x3 each with a 2x2 max-pool to a "
        "4x4x8 code, nearest-neighbour upsampling with conv 8/8/16, conv 1 + sigmoid, cross-entropy, Adam 1e-3 "
        "(compare with `conv`)",
        net=ConvSeedAE(),
        layout="image",
        latent=TensorSpec("z", ("batch", 8, 4, 4), layout="NCHW latent 8x4x4", description="latent code"),
        latent_size=128,
        cfg=cfg,
        data=data,
        loss="bce",
        extra_metrics={"seed": {"source": SEED, "ours": "conv"}},
    )
