"""noise-cancel-seed: seed 000's noise-cancelling autoencoder as written, and the seed's ablation measured.

    Conv2D 10 3x3 same ReLU -> MaxPooling2D 2x2 stride 1 same -> Conv2DTranspose 10 3x3 stride 1 same ReLU
    -> Conv2D 1 3x3 same sigmoid; binary cross-entropy

Every layer keeps the size, so any H x W works. What the seed does not say is ours, as in `denoise`: the noise
(Gaussian, sigma drawn per image in [0.05, 0.8], clipped to [0, 1]), Adam at Keras' default 1e-3, batch, epochs.

The seed also claims that, of the models it tried by removing layers, only a single Conv2D (1 filter, 3x3,
sigmoid) did not remove the noise. That model is trained here the same way and measured on the same noisy test
digits; its numbers are in this card (`metrics.ablation_single_conv2d`), it is not served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models import denoise
from training.spec import DataOptions, Trained

NAME = "noise-cancel-seed"
SEED = "seed 000 (shared/seeds/000_*.txt), 'Noise Canceling'"
MIN_SIDE = 1


@dataclass
class Config(denoise.Config):
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    augment_fraction: float = 0.0


class NoiseCancelSeedAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 10, 3, padding=1), nn.ReLU(),
            # 'same' 2x2 pooling at stride 1 pads the end; after a ReLU, zeros there never win the max.
            nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1),
            nn.ConvTranspose2d(10, 10, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(10, 1, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def single_conv2d() -> nn.Module:
    """The seed's ablation: the input through one Conv2D (1 filter, 3x3, same, sigmoid)."""
    return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Sigmoid())


def train(cfg: Config, data: DataOptions) -> Trained:
    ablation_fit, ablation, _, _ = denoise.fit_denoiser(single_conv2d(), cfg, data)
    verdict = {
        sigma: {
            "single_conv2d_psnr_db": row["model_psnr_db"],
            "noisy_input_psnr_db": row["noisy_input_psnr_db"],
            "gain_over_noisy_db": row["model_psnr_db"] - row["noisy_input_psnr_db"],
        }
        for sigma, row in ablation.items()
    }
    return denoise.train_digit_denoiser(
        NoiseCancelSeedAE(),
        cfg,
        data,
        description="Seed 000's noise-cancelling autoencoder as written: conv 10 3x3, max-pool 2x2 stride 1, "
        "transposed conv 10 3x3, conv 1 3x3 + sigmoid, BCE; any size (compare with `denoise`)",
        min_side=MIN_SIDE,
        in_graph="none (every layer keeps the size)",
        extra_metrics={
            "seed": {"source": SEED, "ours": "denoise"},
            "ablation_single_conv2d": {
                "model": "Conv2D 1 filter 3x3 same + sigmoid, trained like this model",
                "claim": "the seed: of its reduced models, only this one did not remove the noise",
                "by_sigma": verdict,
                "best_val_psnr_db": -ablation_fit.best_val_loss,
            },
        },
    )
