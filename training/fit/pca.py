"""The honest baseline: PCA with K components, fitted on the (standardised) training samples.

Fitted from the d x d covariance accumulated a block of rows at a time when d is moderate and below the number
of samples (never a float64 copy of the data), by an exact SVD of the data when it is small, else by a randomized
SVD. `training.fit.nets.linear_vectors` turns it into an autoencoder with the
same graphs as the network's, so `--pca-if-better` can export it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_ROWS = 1 << 14
COVARIANCE_MAX_DIM = 4096
EXACT_SVD_MAX_VALUES = 1 << 24  # samples x values of an exact SVD (128 MiB of float64)


@dataclass(frozen=True)
class Pca:
    """K components (rows of `components`, unit length) around `centre`, and the variance they explain."""

    components: np.ndarray
    centre: np.ndarray
    explained_variance: float

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64) - self.centre
        return ((flat @ self.components.T) @ self.components + self.centre).reshape(x.shape)


def fit_pca(x: np.ndarray, k: int, transform: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0) -> Pca:
    """PCA of the rows of `x` (flattened), each block passed through `transform` first (e.g. standardisation)."""
    n = len(x)
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    if not 1 <= k <= min(n, d):
        raise ValueError(f"PCA with {k} components needs at least {k} samples and {k} values per sample")

    def blocks():
        for start in range(0, n, BLOCK_ROWS):
            block = flat[start : start + BLOCK_ROWS].astype(np.float64)
            yield transform(block) if transform is not None else block

    total = np.zeros(d)
    for block in blocks():
        total += block.sum(axis=0)
    centre = total / n
    if d <= min(n, COVARIANCE_MAX_DIM):
        cov = np.zeros((d, d))
        for block in blocks():
            c = block - centre
            cov += c.T @ c
        values, vectors = np.linalg.eigh(cov / n)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0, None)
        components = vectors[:, order[:k]].T
        explained = float(values[:k].sum() / max(values.sum(), 1e-300))
    elif n * d <= EXACT_SVD_MAX_VALUES:
        # Fewer samples than values (67 colour tiles of 28 x 28 x 3): the SVD of the data, not a d x d eigh
        # (5 s for d = 2352 here).
        centred64 = np.concatenate([b - centre for b in blocks()])
        _, s64, vt = np.linalg.svd(centred64, full_matrices=False)
        components = vt[:k]
        explained = float((s64[:k] ** 2).sum() / max((s64**2).sum(), 1e-300))
    else:
        centred = torch.from_numpy(np.concatenate([(b - centre).astype(np.float32) for b in blocks()]))
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(centred, q=min(k + 10, n, d), niter=4)
        components = v[:, :k].T.double().numpy()
        total_var = float(centred.double().pow(2).sum())
        explained = float((s[:k].double() ** 2).sum() / max(total_var, 1e-300))
    return Pca(np.ascontiguousarray(components), centre, explained)
