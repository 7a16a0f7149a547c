"""The training loop of every fit: AdamW, learning rate halved when validation stalls, early stopping on the
validation loss (the best epoch's weights are kept), progress on the terminal, and DDP when under torchrun."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.common import FitResult
from training.fit.distributed import World
from training.fit.metrics import errors
from training.fit.options import FitOptions
from training.fit.progress import Progress

# A validation loss must beat the best by this fraction to count as progress.
MIN_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int


Batch = tuple[torch.Tensor, ...]

# Automatic batch size: at most 64, and small enough for 8 steps an epoch on a small data set (47 series of
# ItalyPowerDemand in batches of 64 took one step an epoch, and the LSTM never got near PCA; in batches of 8 it
# beat it).
MAX_AUTO_BATCH = 64
MIN_AUTO_BATCH = 8
AUTO_STEPS_PER_EPOCH = 8


def settings_for(opts: FitOptions, n_train: int) -> LoopSettings:
    """The loop's settings from the command's options; `--batch-size` left out: the automatic size above."""
    batch = opts.batch_size
    if batch is None:
        batch = min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, math.ceil(n_train / AUTO_STEPS_PER_EPOCH)))
    return LoopSettings(opts.epochs, opts.patience, batch, opts.lr, opts.weight_decay, opts.seed)


def train_loop(
    model: nn.Module,
    n_train: int,
    batch_of: Callable[[torch.Tensor], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    val_loss: Callable[[nn.Module], float],
    settings: LoopSettings,
    progress: Progress,
    world: World | None = None,
) -> FitResult:
    """Train `model` on batches `batch_of(indices)` of `n_train` samples, minimising `loss_fn(module, batch)` (the
    module is DDP's wrapper under torchrun: the loss must call it, not a method of the model); stop after
    `patience` epochs without a better `val_loss(model)`."""
    world = world or World()
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    net = world.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, settings.patience // 3))
    steps = math.ceil(n_train / settings.batch_size)
    best, best_epoch, since_best = math.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    start = time.perf_counter()
    progress.begin(
        f"training on {n_train} samples: at most {settings.epochs} epochs of {steps} steps, stopping after "
        f"{settings.patience} without a better validation loss"
        + (f"; {world.size} processes" if world.size > 1 else ""),
        settings.epochs,
        steps,
    )
    status = ""
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total, count = 0.0, 0
        for step, first in enumerate(range(0, n_train, settings.batch_size)):
            chunk = order[first : first + settings.batch_size]
            if len(chunk) < world.size:
                break  # every process must take the same number of steps
            idx = world.shard(chunk)
            batch = batch_of(idx)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net, batch)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
            progress.step(epoch, step, total / count, status)
        model.eval()
        with torch.no_grad():
            v = val_loss(model)
        if not math.isfinite(v):
            raise ValueError(f"the validation loss became {v} at epoch {epoch + 1}: try a smaller --lr")
        sched.step(v)
        train_loss = total / max(count, 1)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": v})
        if v < best * (1 - MIN_IMPROVEMENT) or best_epoch == 0:
            best, best_epoch, since_best = v, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        status = f"val {v:.4g} (best {best:.4g} @ {best_epoch})"
        progress.epoch(epoch, train_loss, v, f"best {best:.4g} @ {best_epoch}")
        if since_best >= settings.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - start
    stopped = len(history) < settings.epochs
    progress.end(
        f"{'stopped early' if stopped else 'done'} after {len(history)} epochs in {seconds:.1f} s; best validation "
        f"loss {best:.4g} at epoch {best_epoch}"
    )
    return FitResult(best_epoch, best, seconds, history)


def train_autoencoder(
    model: nn.Module,
    x_train: torch.Tensor,
    x_val: np.ndarray,
    settings: LoopSettings,
    progress: Progress,
    world: World | None = None,
) -> FitResult:
    """`train_loop` for an autoencoder whose forward gives (reconstruction, per-sample score): minimise the mean
    score, stop on the validation MSE."""
    return train_loop(
        model,
        len(x_train),
        lambda idx: (x_train[idx],),
        lambda net, batch: net(batch[0])[1].mean(),
        lambda m: errors(m, x_val).mse,
        settings,
        progress,
        world,
    )
