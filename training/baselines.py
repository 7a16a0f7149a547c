"""Baselines every autoencoder is reported beside, and the quality measures (numpy only)."""

from __future__ import annotations

import numpy as np


class PCA:
    """Principal component analysis fitted by SVD: the linear autoencoder with k components."""

    def __init__(self, k: int):
        self.k = k

    def fit(self, x: np.ndarray) -> PCA:
        x = x.reshape(len(x), -1).astype(np.float64)
        self.mean_ = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean_, full_matrices=False)
        self.components_ = vt[: self.k]
        return self

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64) - self.mean_
        return ((flat @ self.components_.T) @ self.components_ + self.mean_).reshape(x.shape)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error per element."""
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def per_sample_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1)
    return np.mean(d**2, axis=1)


def psnr(clean: np.ndarray, other: np.ndarray, peak: float = 1.0) -> float:
    """Mean over images of per-image PSNR in dB (peak 1.0 for [0, 1] pixels)."""
    err = np.maximum(per_sample_mse(clean, other), 1e-12)
    return float(np.mean(10 * np.log10(peak**2 / err)))


def add_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise clipped to [0, 1], reproducible from the seed."""
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def median3x3(images: np.ndarray) -> np.ndarray:
    """3x3 median filter with edge replication, images [N, H, W]."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = images.shape[1:]
    stack = np.stack([p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)
    return np.median(stack, axis=0).astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflect padding, images [N, H, W]."""
    radius = max(1, round(3 * sigma))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    p = np.pad(images, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    out = sum(k[i] * p[:, i : i + images.shape[1], :] for i in range(len(k)))
    p = np.pad(out, ((0, 0), (0, 0), (radius, radius)), mode="reflect")
    out = sum(k[i] * p[:, :, i : i + images.shape[2]] for i in range(len(k)))
    return out.astype(np.float32)


def tune_gaussian_blur(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The blur sigma with the best PSNR on the (validation) images given."""
    grid = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0]
    return max(grid, key=lambda s: psnr(clean, gaussian_blur(noisy, s)))


def roc_auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Area under the ROC curve (probability a random anomaly scores above a random normal; ties half)."""
    pos, neg = scores[is_anomaly], scores[~is_anomaly]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC AUC needs both normal and anomalous samples")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def precision_recall(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores > threshold
    tp = int((flagged & is_anomaly).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(is_anomaly.sum()), 1)
    return precision, recall
