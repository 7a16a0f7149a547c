"""Measures every fit reports: reconstruction errors (standardised and raw units) and the anomaly threshold with
the validation scores' quantiles, all computed through the very module that is exported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.common import anomaly_section

BATCH = 4096


@dataclass(frozen=True)
class Errors:
    """Per-sample scores (the graph's `score` output) and the mean squared error in raw units of one split."""

    scores: np.ndarray
    raw_mse: float

    @property
    def mse(self) -> float:
        """Mean squared error per value, in the units the score uses (standardised for vectors)."""
        return float(self.scores.mean())


@torch.no_grad()
def errors(model: nn.Module, x: np.ndarray) -> Errors:
    """Run the autoencoder (`forward` -> reconstruction, score) over `x` in batches."""
    scores, sq_sum, count = [], 0.0, 0
    for start in range(0, len(x), BATCH):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + BATCH]))
        r, s = model(xb)
        scores.append(s.double().numpy())
        sq_sum += float((r.double() - xb.double()).pow(2).sum())
        count += xb.numel()
    return Errors(np.concatenate(scores), sq_sum / max(count, 1))


def threshold_section(val_scores: np.ndarray, quantile: float, score_text: str, unit: str) -> dict:
    """The card's `anomaly` section: the threshold at `quantile` of the validation scores, and their quantiles."""
    rule = f"{quantile:g} quantile of the {len(val_scores)} validation {unit}' scores"
    return anomaly_section(val_scores, score_text, rule, quantile)
