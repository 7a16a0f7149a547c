"""lstm-seed: seed 000's LSTM autoencoder ("simple dimensionality reduction") as written, beside our `lstm`.

    encoder: Bidirectional(LSTM(nHidden, return_sequences=True), merge_mode='sum')
    decoder: Bidirectional(LSTM(nHidden, return_sequences=True), merge_mode='sum') -> TimeDistributed(Dense(C))

Two bidirectional LSTMs, the code being the first one's nHidden features per step. nHidden is left open by the
seed: our code size (3 numbers per step for 6 channels), so the two are compared at the same reduction. The
rest is ours, as in `lstm`: BasicMotions, per-channel standardisation in the graph, training on random crops,
optimiser and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.models import lstm
from training.models.sequence import BiLSTMSum, Standardizer
from training.spec import DataOptions, Trained

NAME = "lstm-seed"
SEED = "seed 000 (shared/seeds/000_*.txt), 'LSTM Autoencoder', 1"


@dataclass
class Config(lstm.Config):
    latent: int = 3  # nHidden: not given by the seed; our code size


class SeedEncoder(nn.Module):
    def __init__(self, norm: Standardizer, channels: int, latent: int):
        super().__init__()
        self.norm = norm
        self.rnn = BiLSTMSum(channels, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.norm(x))


class SeedDecoder(nn.Module):
    def __init__(self, norm: Standardizer, channels: int, latent: int):
        super().__init__()
        self.norm = norm
        self.rnn = BiLSTMSum(latent, latent)
        self.out = nn.Linear(latent, channels)  # TimeDistributed(Dense(C))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm.inverse(self.out(self.rnn(z)))


class SeedSequenceAE(lstm.SequenceAE):
    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int, latent: int):
        super().__init__(mean, std, hidden, latent)
        channels = len(mean)
        self.encoder = SeedEncoder(self.norm, channels, latent)
        self.decoder = SeedDecoder(self.norm, channels, latent)


def train(cfg: Config, data: DataOptions) -> Trained:
    return lstm.train_sequence_ae(
        cfg,
        data,
        SeedSequenceAE,
        "Seed 000's LSTM autoencoder as written: a bidirectional LSTM (sum merge) to {latent} features per step, "
        "a bidirectional LSTM (sum merge) and a per-step Dense back to {channels} channels (compare with `lstm`)",
        extra_metrics={"seed": {"source": SEED, "ours": "lstm"}},
    )
