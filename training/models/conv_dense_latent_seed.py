"""conv-dense-latent-seed: seed 000's CNN autoencoder exactly as written, served beside `conv-dense-latent`.

    28x28x1 -> Conv2D 10 5x5 same ReLU -> MaxPooling2D 5x5 stride 1 valid (24x24x10) -> Flatten -> Dense 196 linear
    -> Reshape 14x14x1 -> Conv2DTranspose 10 4x4 stride 2 same ReLU (28x28x10) -> Conv2D 1 4x4 same, linear;
    MSE; Adam(lr=0.005)

The seed's `Input(batch_size=(None, 28, 28))` is read as 28x28x1 (a slip for `shape`). Its data are seed 000's
per-image standardised pixels, so this model uses them too, inside the graphs as in `dense-seed`. Keras' 'same'
for an even kernel pads one pixel before and two after (TensorFlow's rule), reproduced here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.export import TensorSpec
from training.models.mnist_ae import Seed000Config, seed000_recipe, train_mnist_autoencoder
from training.spec import DataOptions, Trained

NAME = "conv-dense-latent-seed"
SEED = "seed 000 (shared/seeds/000_*.txt), 'CNN Autoencoder'"


@dataclass
class Config(Seed000Config):
    epochs: int = 40
    lr: float = 0.005


class ConvDenseLatentSeedAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 5, padding=2), nn.ReLU(),  # 'same'
            nn.MaxPool2d(5, stride=1),  # 'valid': 28 -> 24
            nn.Flatten(),
            nn.Linear(10 * 24 * 24, 14 * 14),  # linear
            nn.Unflatten(1, (1, 14, 14)),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1, 10, 4, stride=2, padding=1), nn.ReLU(),  # 'same', stride 2: 14 -> 28
            nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(10, 1, 4),  # 'same' for a 4x4 kernel, linear
        )  # fmt: skip


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_mnist_autoencoder(
        kind="conv-dense-latent",
        description="Seed 000's CNN autoencoder as written: per-image standardisation, conv 10 5x5, max-pool 5x5 "
        "stride 1, Dense 196 linear to a 14x14 map, transposed conv 10 4x4 stride 2, conv 1 4x4 linear, MSE, "
        f"Adam lr {cfg.lr:g}, {cfg.train_images} training images (compare with `conv-dense-latent`)",
        net=ConvDenseLatentSeedAE(),
        layout="image",
        latent=TensorSpec("z", ("batch", 1, 14, 14), layout="NCHW latent map 1x14x14", description="latent map"),
        latent_size=196,
        cfg=cfg,
        data=data,
        **seed000_recipe(cfg),
        extra_metrics={"seed": {"source": SEED, "ours": "conv-dense-latent"}},
    )
