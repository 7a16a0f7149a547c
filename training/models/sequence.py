"""Shared pieces of the LSTM models: per-channel standardisation inside the graph, sliding windows, splits.

Inputs are raw sensor values [N, T, C] (time-major, channels last). Each graph standardises with the
training set's per-channel mean and std as its first step (and de-standardises its output), so clients send
the data as it was recorded and every client of the ONNX file gets the same answer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from app.core.cards import window_starts
from training.data.mnist import stratified_split


class Standardizer(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class BiLSTMSum(nn.Module):
    """A bidirectional LSTM whose two directions are summed (Keras merge_mode="sum"), sequences returned."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return out[..., : self.hidden] + out[..., self.hidden :]


def windows(x: np.ndarray, length: int, stride: int) -> np.ndarray:
    """All windows [W * N, length, C] of series [N, T, C], window-major (window w of series n at w * N + n)."""
    return np.concatenate([x[:, s : s + length] for s in window_starts(x.shape[1], length, stride)], axis=0)


def random_crops(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """One random window of `length` steps from each series of [N, T, C]."""
    t = x.shape[1]
    if t <= length:
        return x
    starts = torch.randint(0, t - length + 1, (len(x),), generator=gen)
    idx = starts[:, None] + torch.arange(length)[None, :]
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def standardisation_note(norm: Standardizer, channels: list[str]) -> dict:
    """The card's preprocessing entry for a graph that standardises inside itself."""
    return {
        "client": "none: send raw sensor values, time-major [T, C] per series",
        "in_graph": "per-channel standardisation with the training set's mean and std (outputs de-standardised)",
        "channel_mean": dict(zip(channels, norm.mean.tolist(), strict=True)),
        "channel_std": dict(zip(channels, norm.std.tolist(), strict=True)),
    }


def split_train_val(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, round(len(labels) * val_fraction))
    train_idx, val_idx = stratified_split(labels, (len(labels) - n_val, n_val), seed)
    return train_idx, val_idx
