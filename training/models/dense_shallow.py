"""dense-shallow: the simplest autoencoder, one ReLU hidden layer of 32 as the code, sigmoid output."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import MnistAEConfig, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "dense-shallow"


@dataclass
class Config(MnistAEConfig):
    latent: int = 32
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-5


class ShallowAE(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, latent), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent, 784), nn.Sigmoid())


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="dense-shallow",
        description=f"Shallow dense MNIST autoencoder 784-{cfg.latent}-784: one ReLU code layer, sigmoid output",
        net=ShallowAE(cfg.latent),
        layout="vector",
        latent=TensorSpec(
            "z",
            ("batch", cfg.latent),
            value_range=(0.0, None),
            layout=f"N x {cfg.latent}",
            description="latent code (ReLU, non-negative)",
        ),
        latent_size=cfg.latent,
        cfg=cfg,
        data=data,
    )
