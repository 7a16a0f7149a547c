"""The networks `fit` trains, each an encoder and a decoder that take and give the data in its own units.

Vectors are standardised per column inside the graphs (training rows' mean and std): `encode` takes raw rows,
`decode` and `reconstruct` give raw units back. Images are pixels in [0, 1] in and out. Every autoencoder's
`forward` returns the reconstruction and each sample's score, the mean squared error over its values (in
standardised units for vectors): the `full` graph the service's `reconstruct` and `score` tasks run.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from training.models.sequence import Standardizer


def std_of(norm: Standardizer) -> torch.Tensor:
    """The standardiser's std buffer, typed."""
    return cast(torch.Tensor, norm.std)


class Destandardize(nn.Module):
    """The inverse of a `Standardizer` (shares its buffers)."""

    def __init__(self, norm: Standardizer):
        super().__init__()
        self.norm = norm

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm.inverse(z)


class Autoencoder(nn.Module):
    """encoder -> decoder, plus each sample's mean squared error, divided by `scale` first when given."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, scale: torch.Tensor | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.scale = scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.decoder(self.encoder(x))
        return r, self._squared(r, x).flatten(1).mean(1)

    def _squared(self, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = r - x
        return (d / self.scale if self.scale is not None else d).pow(2)


def dense_vectors(mean: np.ndarray, std: np.ndarray, hidden: int, latent: int) -> Autoencoder:
    """d -> hidden -> K -> hidden -> d with ReLU inside, a linear code and a linear output (raw units outside)."""
    d = len(mean)
    norm = Standardizer(mean, std)
    encoder = nn.Sequential(norm, nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, latent))
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d), Destandardize(norm))
    return Autoencoder(encoder, decoder, std_of(norm))


def linear_vectors(mean: np.ndarray, std: np.ndarray, components: np.ndarray, centre: np.ndarray) -> Autoencoder:
    """PCA as an autoencoder with the same interface: z = V (s(x) - c), x' = s^-1(V^T z + c), where s standardises,
    V holds the K components (rows) and c is the standardised training mean."""
    k, d = components.shape
    norm = Standardizer(mean, std)
    project, expand = nn.Linear(d, k), nn.Linear(k, d)
    v = torch.as_tensor(components, dtype=torch.float32)
    c = torch.as_tensor(centre, dtype=torch.float32)
    with torch.no_grad():
        project.weight.copy_(v)
        project.bias.copy_(-(v @ c))
        expand.weight.copy_(v.T)
        expand.bias.copy_(c)
    return Autoencoder(nn.Sequential(norm, project), nn.Sequential(expand, Destandardize(norm)), std_of(norm))


def dense_images(channels: int, size: int, hidden: int, latent: int) -> Autoencoder:
    """Pixels [N, C, S, S] in [0, 1] -> hidden -> K -> hidden -> pixels (sigmoid output)."""
    values = channels * size * size
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(values, hidden), nn.ReLU(), nn.Linear(hidden, latent))
    decoder = nn.Sequential(
        nn.Linear(latent, hidden),
        nn.ReLU(),
        nn.Linear(hidden, values),
        nn.Sigmoid(),
        nn.Unflatten(1, (channels, size, size)),
    )
    return Autoencoder(encoder, decoder)


def conv_images(channels: int, size: int, width: int, latent: int) -> Autoencoder:
    """Two conv + 2x max-pool stages, a dense K-number code, then two nearest-neighbour 2x upsamples + conv
    (no checkerboard); `size` must be a multiple of 4 (PITFALLS: ONNX Runtime silently shrinks other sizes)."""
    if size % 4:
        raise ValueError(f"the conv autoencoder needs a side that is a multiple of 4, not {size}")
    side = size // 4
    flat = 2 * width * side * side
    encoder = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, flat),
        nn.ReLU(),
        nn.Unflatten(1, (2 * width, side, side)),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(2 * width, width, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(width, channels, 3, padding=1),
        nn.Sigmoid(),
    )
    return Autoencoder(encoder, decoder)


class WindowEncoder(nn.Module):
    """Raw series [N, T, C] -> one code [N, K] per series: standardise, bidirectional LSTM, the forward direction's
    last state and the backward direction's first, a linear map to K numbers (any T)."""

    def __init__(self, norm: Standardizer, channels: int, hidden: int, latent: int):
        super().__init__()
        self.norm, self.hidden = norm, hidden
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.code = nn.Linear(2 * hidden, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.norm(x))
        return self.code(torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1))


class WindowDecoder(nn.Module):
    """Code [N, K] -> series [N, W, C] in raw units (`forward`: the training window's W steps; `unroll`: as many
    steps as a given series has): the code is fed to an LSTM at every step, then mapped to the channels."""

    def __init__(self, norm: Standardizer, channels: int, hidden: int, latent: int, steps: int):
        super().__init__()
        self.norm, self.steps = norm, steps
        self.expand = nn.Linear(latent, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, channels)

    def unroll(self, z: torch.Tensor, steps_like: torch.Tensor) -> torch.Tensor:
        """`steps_like` [N or 1, T, 1] zeros: broadcasting the code over it repeats it T times (T stays dynamic in
        the exported graph)."""
        seq = torch.tanh(self.expand(z)).unsqueeze(1) + steps_like
        out, _ = self.lstm(seq)
        return self.norm.inverse(self.out(out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.unroll(z, z.new_zeros(1, self.steps, 1))


class SeriesAE(nn.Module):
    """A window-level sequence autoencoder: K numbers per window (a real bottleneck even for one channel, unlike a
    per-step code). `forward`: reconstruction of a series of any length and its score, the mean squared error over
    steps and channels in standardised units."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int, latent: int, window: int):
        super().__init__()
        channels = len(mean)
        self.norm = Standardizer(mean, std)
        self.encoder = WindowEncoder(self.norm, channels, hidden, latent)
        self.decoder = WindowDecoder(self.norm, channels, hidden, latent, window)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.decoder.unroll(self.encoder(x), torch.zeros_like(x[:, :, :1]))
        return r, ((r - x) / std_of(self.norm)).pow(2).mean(dim=(1, 2))


class Forecaster(nn.Module):
    """Raw window [N, T, C] -> every channel H steps after it [N, C]: standardise, bidirectional LSTM, a dense head
    predicting the change from the last step (persistence is the starting point), de-standardise."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int):
        super().__init__()
        channels = len(mean)
        self.norm, self.hidden = Standardizer(mean, std), hidden
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        out, _ = self.lstm(z)
        summary = torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1)
        return self.norm.inverse(z[:, -1, :] + self.head(summary))
