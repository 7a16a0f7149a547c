"""Pieces every model's training shares: seeding, the fit loop, augmentation, evaluation helpers."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("training")


@dataclass
class TrainConfig:
    """Fields every model's config has; each model subclasses it with its own defaults."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    # "adamw-onecycle": AdamW, one-cycle cosine schedule (ours); "adam": Adam at a constant lr, no weight decay
    # (Keras' `Adam(lr=...)`, as the seed documents' models are written).
    optimizer: str = "adamw-onecycle"
    seed: int = 0
    # Quick mode: a tiny subset and one epoch, to exercise the whole pipeline in seconds.
    quick: bool = False
    quick_samples: int = 256
    threads: int = 2


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, gen: torch.Generator | None, shuffle: bool = True) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def fit(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, ...]]],
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    val_loss: Callable[[nn.Module], float],
    cfg: TrainConfig,
    steps_per_epoch: int,
) -> FitResult:
    """`cfg.optimizer` (AdamW with a one-cycle cosine schedule, or plain Adam at a constant lr); keeps the weights
    of the epoch with the best validation loss."""
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "adamw-onecycle":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.15
        )
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: adamw-onecycle or adam")
    best, best_state, best_epoch = math.inf, copy.deepcopy(model.state_dict()), 0
    history = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        total, count = 0.0, 0
        for step, batch in enumerate(train_batches(epoch)):
            if step >= steps_per_epoch:
                break
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(batch[0])
            count += len(batch[0])
        model.eval()
        with torch.no_grad():
            v = val_loss(model)
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": v})
        log.debug("epoch %3d  train %.5f  val %.5f", epoch + 1, total / max(count, 1), v)
        if v < best:
            best, best_epoch = v, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch, best, time.perf_counter() - start, history)


def random_affine(
    x: torch.Tensor, gen: torch.Generator, degrees: float, translate: float, scale: float
) -> torch.Tensor:
    """Small random rotation, shift (fraction of the side) and zoom per image of a [N, 1, H, W] batch."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=gen) * 2 - 1  # noqa: E731 - uniform in [-1, 1]
    angle = u() * math.radians(degrees)
    s = 1 + u() * scale
    tx, ty = u() * translate * 2, u() * translate * 2  # affine_grid works in [-1, 1] units
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Run `fn` over a numpy array in chunks and return a numpy array."""
    out = [fn(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


# Quantiles of the validation scores a card names, and the size of the grid it stores for any other.
CARD_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
QUANTILE_GRID = 1001


def anomaly_section(val_scores: np.ndarray, score: str, rule: str, quantile: float = 0.99, **extra: object) -> dict:
    """A card's `anomaly` section: the threshold at `quantile` of the validation scores, the named quantiles and
    a grid of them (0, 0.001, ..., 1), from which the service answers a request's `quantile=` (app/core/cards.py)."""
    scores = np.asarray(val_scores, dtype=np.float64)
    grid = np.quantile(scores, np.linspace(0.0, 1.0, QUANTILE_GRID))
    return {
        "score": score,
        "threshold": float(np.quantile(scores, quantile)),
        "threshold_rule": rule,
        "quantile": quantile,
        "validation_quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in CARD_QUANTILES},
        "validation_score_quantiles": [float(f"{v:.7g}") for v in grid],
        "validation_samples": len(scores),
        **extra,
    }
