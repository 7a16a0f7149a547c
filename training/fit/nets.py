"""The networks `fit` trains, each an encoder and a decoder that take and give the data in its own units.

Vectors are standardised per column inside the graphs (training rows' mean and std): `encode` takes raw rows,
`decode` and `reconstruct` give raw units back. Images are pixels in [0, 1] in and out. Every autoencoder's
`forward` returns the reconstruction and each sample's score, the mean squared error over its values (in
standardised units for vectors): the `full` graph the service's `reconstruct` and `score` tasks run.
PCA, the baseline every fit measures, is also built here as a linear autoencoder with the same interface for each
kind (`linear_vectors`, `linear_images`, `SeriesPca`), so `--pca-if-better` can export it.
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


def _pca_layers(components: np.ndarray, centre: np.ndarray) -> tuple[nn.Linear, nn.Linear]:
    """z = V (x - c) and x' = V^T z + c as two linear layers (V: the K components as rows, c: the centre)."""
    k, d = components.shape
    project, expand = nn.Linear(d, k), nn.Linear(k, d)
    v = torch.as_tensor(components, dtype=torch.float32)
    c = torch.as_tensor(centre, dtype=torch.float32)
    with torch.no_grad():
        project.weight.copy_(v)
        project.bias.copy_(-(v @ c))
        expand.weight.copy_(v.T)
        expand.bias.copy_(c)
    return project, expand


def linear_vectors(mean: np.ndarray, std: np.ndarray, components: np.ndarray, centre: np.ndarray) -> Autoencoder:
    """PCA as an autoencoder with the same interface: z = V (s(x) - c), x' = s^-1(V^T z + c), where s standardises,
    V holds the K components (rows) and c is the standardised training mean."""
    norm = Standardizer(mean, std)
    project, expand = _pca_layers(components, centre)
    return Autoencoder(nn.Sequential(norm, project), nn.Sequential(expand, Destandardize(norm)), std_of(norm))


def linear_images(channels: int, size: int, components: np.ndarray, centre: np.ndarray) -> Autoencoder:
    """PCA of the flattened pixels as an image autoencoder with the networks' interface: z = V (x - c), and
    x' = V^T z + c clipped to [0, 1] (the pixels' range, which the networks' sigmoid keeps too; clipping only
    brings a reconstruction closer to pixels in [0, 1])."""
    project, expand = _pca_layers(components, centre)
    encoder = nn.Sequential(nn.Flatten(), project)
    decoder = nn.Sequential(expand, nn.Hardtanh(0.0, 1.0), nn.Unflatten(1, (channels, size, size)))
    return Autoencoder(encoder, decoder)


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


class WindowPcaEncoder(nn.Module):
    """Raw series [N, T, C] (T >= W) -> [N, K]: standardise, project every W-step window (stride 1) on the PCA
    components (a convolution over time), average the windows' codes; for T = W this is the PCA code."""

    def __init__(self, norm: Standardizer, project: nn.Conv1d):
        super().__init__()
        self.norm, self.project = norm, project

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K, T - W + 1]: the code of every window."""
        return self.project(self.norm(x).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes(x).mean(dim=2)


class WindowPcaDecoder(nn.Module):
    """Code [N, K] -> a window [N, W, C] in raw units: V^T z + c, de-standardised."""

    def __init__(self, norm: Standardizer, expand: nn.Linear, steps: int, channels: int):
        super().__init__()
        self.norm, self.expand = norm, expand
        self.steps, self.channels = steps, channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm.inverse(self.expand(z).unflatten(1, (self.steps, self.channels)))


class SeriesPca(nn.Module):
    """PCA-K of the flattened standardised W-step windows as a sequence autoencoder with `SeriesAE`'s interface.

    `encoder`: [N, T, C] -> [N, K] (`WindowPcaEncoder`); `decoder`: [N, K] -> [N, W, C]; `forward`: the
    reconstruction of a series of any length T >= W, each step the average of the PCA reconstructions of the
    windows (stride 1) that contain it (for T = W: exactly PCA's), and its score, the mean squared error over steps
    and channels in standardised units."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, components: np.ndarray, centre: np.ndarray, window: int):
        super().__init__()
        channels, k = len(mean), int(components.shape[0])
        self.norm = Standardizer(mean, std)
        # A window flattens time-major (step t, channel c at t * C + c): as convolution kernels, [K, C, W].
        kernel = torch.as_tensor(components.reshape(k, window, channels).transpose(0, 2, 1), dtype=torch.float32)
        c = torch.as_tensor(centre, dtype=torch.float32)
        flat_project, expand = _pca_layers(components, centre)
        project = nn.Conv1d(channels, k, window)
        spread = nn.ConvTranspose1d(k + 1, channels, window, bias=False)
        with torch.no_grad():
            project.weight.copy_(kernel)
            cast(torch.Tensor, project.bias).copy_(flat_project.bias)
            # The last input channel is all ones: it adds the centre c to every window's reconstruction.
            spread.weight.copy_(torch.cat([kernel, c.reshape(window, channels).T[None]]))
        self.encoder = WindowPcaEncoder(self.norm, project)
        self.decoder = WindowPcaDecoder(self.norm, expand, window, channels)
        self.spread = spread
        self.register_buffer("box", torch.ones(1, 1, window))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encoder.codes(x)
        ones = torch.ones_like(codes[:, :1])
        summed = self.spread(torch.cat([codes, ones], dim=1))  # [N, C, T]: every window's reconstruction, summed
        count = nn.functional.conv_transpose1d(ones, cast(torch.Tensor, self.box))  # windows containing each step
        r = self.norm.inverse((summed / count).transpose(1, 2))
        return r, ((r - x) / std_of(self.norm)).pow(2).mean(dim=(1, 2))
