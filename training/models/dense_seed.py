"""dense-seed: seed 000's dense autoencoder exactly as written, served beside our `dense`.

    inputX = sc.fit_transform(mnist.data[:3000].T).T         # each image standardised over its own pixels
    784 -> Dense 256 ReLU -> Dense nFeature ReLU -> Dense 256 ReLU -> Dense 784 linear; MSE; Adam(lr=0.01)

nFeature is left open by the seed: ours (32). "3,000 images" are the first 3,000 of our training split. What the
seed leaves unsaid is ours too: batch 32 (Keras' default), epochs, and keeping the epoch with the best validation
MSE. Clients send and receive plain pixels: the standardisation is the encoder's first step and `full` maps the
reconstruction back with the input's own mean and std; `decode` returns standardised values (see the card).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import Seed000Config, seed000_recipe, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "dense-seed"
SEED = "seed 000 (shared/seeds/000_*.txt), 'Dimensionality Reduction'"


@dataclass
class Config(Seed000Config):
    latent: int = 32  # nFeature: not given by the seed; ours
    hidden: int = 256
    epochs: int = 60
    lr: float = 0.01


class DenseSeedAE(nn.Module):
    def __init__(self, latent: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, latent), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 784))


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="dense",
        description=f"Seed 000's dense autoencoder as written: per-image standardisation, 784-{cfg.hidden}-"
        f"{cfg.latent}-{cfg.hidden}-784, ReLU code, linear output, MSE, Adam lr {cfg.lr:g}, "
        f"{cfg.train_images} training images (compare with `dense`)",
        net=DenseSeedAE(cfg.latent, cfg.hidden),
        layout="vector",
        latent=TensorSpec("z", ("batch", cfg.latent), layout=f"N x {cfg.latent}", description="latent code (ReLU)"),
        latent_size=cfg.latent,
        cfg=cfg,
        data=data,
        **seed000_recipe(cfg),
        extra_metrics={"seed": {"source": SEED, "ours": "dense"}},
    )
