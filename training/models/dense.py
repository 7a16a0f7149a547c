"""dense: 784 -> 256 -> latent -> 256 -> 784, ReLU inside, sigmoid output."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import MnistAEConfig, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "dense"


@dataclass
class Config(MnistAEConfig):
    latent: int = 32
    hidden: int = 256
    epochs: int = 120
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


class DenseAE(nn.Module):
    def __init__(self, latent: int, hidden: int):
        super().__init__()
        # The code is linear (no activation): the bottleneck is a plain projection, as in PCA.
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 784), nn.Sigmoid())


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="dense",
        description=f"Dense MNIST autoencoder 784-{cfg.hidden}-{cfg.latent}-{cfg.hidden}-784 "
        "(ReLU, sigmoid output): latent codes for dimensionality reduction",
        net=DenseAE(cfg.latent, cfg.hidden),
        layout="vector",
        latent=TensorSpec("z", ("batch", cfg.latent), layout=f"N x {cfg.latent}", description="latent code"),
        latent_size=cfg.latent,
        cfg=cfg,
        data=data,
        pca_gate_ratio=0.7,
    )
