"""lstm-forecast: "reduce and predict" - bidirectional LSTM (concat), dropout, dense 64, dense output
predicting the next step (horizon 1 = 0.1 s) of every channel from a window of past steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.baselines import mse
from training.common import TrainConfig, batches, fit, predict, seed_everything
from training.data.timeseries import load_basic_motions
from training.export import GraphSpec, TensorSpec
from training.models.lstm import sequence_section
from training.models.sequence import Standardizer, split_train_val, standardisation_note
from training.spec import DataOptions, Gate, Trained

NAME = "lstm-forecast"


@dataclass
class Config(TrainConfig):
    window: int = 20  # past steps fed to the model
    horizon: int = 1
    hidden: int = 64
    dense: int = 64
    dropout: float = 0.2
    dropout_after_dense: float = 0.0  # the seed's second Dropout (after Dense 64 ReLU); 0: none (ours)
    predict_change: bool = True  # predict the change from the last step (ours) or the value itself (the seed)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2


class Forecaster(nn.Module):
    def __init__(
        self,
        mean: np.ndarray,
        std: np.ndarray,
        hidden: int,
        dense: int,
        dropout: float,
        dropout_after_dense: float = 0.0,
        predict_change: bool = True,
    ):
        super().__init__()
        channels = len(mean)
        self.norm = Standardizer(mean, std)
        self.hidden = hidden
        self.predict_change = predict_change
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        second = [nn.Dropout(dropout_after_dense)] if dropout_after_dense else []
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * hidden, dense), nn.ReLU(), *second, nn.Linear(dense, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        out, _ = self.lstm(z)
        # Concat merge of the two directions' final states: forward at the last step, backward at the first.
        summary = torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1)
        # Ours: the head predicts the change from the last observed step (in standardised units).
        if self.predict_change:
            return self.norm.inverse(z[:, -1, :] + self.head(summary))
        return self.norm.inverse(self.head(summary))


def make_pairs(x: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, value `horizon` steps after it) pair of series [N, T, C]."""
    inputs, targets = [], []
    for end in range(window, x.shape[1] - horizon + 1):
        inputs.append(x[:, end - window : end])
        targets.append(x[:, end + horizon - 1])
    return np.concatenate(inputs), np.concatenate(targets)


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_forecaster(
        cfg,
        data,
        description="Reduce and predict: bidirectional LSTM (concat), dropout, dense 64, dense output forecasting "
        "the change to the next step of all {channels} channels",
    )


def train_forecaster(cfg: Config, data: DataOptions, description: str, extra_metrics: dict | None = None) -> Trained:
    """Fit a `Forecaster` of `cfg` on BasicMotions windows; `description` may name `{channels}`."""
    gen = seed_everything(cfg.seed, cfg.threads)
    train_set, test_set, provenance = load_basic_motions()
    tr_idx, va_idx = split_train_val(train_set.y, cfg.val_fraction, data.seed)
    series = {"train": train_set.x[tr_idx], "val": train_set.x[va_idx], "test": test_set.x}
    if cfg.quick:
        series = {k: v[:4] for k, v in series.items()}
    pairs = {k: make_pairs(v, cfg.window, cfg.horizon) for k, v in series.items()}
    flat = series["train"].reshape(-1, series["train"].shape[2])
    model = Forecaster(
        flat.mean(0), flat.std(0), cfg.hidden, cfg.dense, cfg.dropout, cfg.dropout_after_dense, cfg.predict_change
    )
    std = model.norm.std
    xt, yt = (torch.from_numpy(a) for a in pairs["train"])
    xv, yv = (torch.from_numpy(a) for a in pairs["val"])

    def train_batches(epoch: int):
        for idx in batches(len(xt), cfg.batch_size, gen):
            yield xt[idx], yt[idx]

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) / std).pow(2).mean()

    steps = (len(xt) + cfg.batch_size - 1) // cfg.batch_size
    result = fit(model, train_batches, loss_fn, lambda m: float(loss_fn(m, (xv, yv))), cfg, steps)

    x_test, y_test = pairs["test"]
    s = std.numpy()
    pred = predict(model, x_test)
    model_err = mse(pred / s, y_test / s)
    persistence_err = mse(x_test[:, -1] / s, y_test / s)
    channels = provenance["channels"]
    x_spec = TensorSpec(
        "x", ("batch", "time", len(channels)), layout="N x T x C (time-major, channels last)",
        description=f"the last T raw sensor steps (trained with T = {cfg.window})",
    )  # fmt: skip
    y_spec = TensorSpec(
        "forecast", ("batch", len(channels)), layout="N x C",
        description=f"every channel {cfg.horizon} step(s) after the window, raw units",
    )  # fmt: skip
    parity = [(x_test[:1],), (x_test[:7],), (x_test[:3, :13],)]
    section = sequence_section(channels, window=cfg.window, stride=1)
    return Trained(
        kind="lstm-forecast",
        description=description.format(channels=len(channels)),
        tasks=["predict"],
        graphs=[GraphSpec("full", model, [x_spec], [y_spec], parity, dynamo=False, description="window -> next step")],
        metrics={
            "test_mse_standardized": model_err,
            "test_mse_raw_units": mse(pred, y_test),
            "baselines": {"persistence_mse_standardized": persistence_err},
            "ratio_to_persistence": model_err / persistence_err,
            "test_windows": len(x_test),
            **(extra_metrics or {}),
        },
        gates=[Gate("test MSE below persistence (last value)", model_err, persistence_err)],
        data={
            **provenance,
            "split": f"TRAIN series {len(series['train'])} train / {len(series['val'])} val "
            f"(stratified); TEST {len(series['test'])} series; every window of {cfg.window} steps",
        },
        fit=result,
        preprocessing=standardisation_note(model.norm, channels),
        sections={
            "input": section,
            "forecast": {"horizon": cfg.horizon, "window": cfg.window, "step_seconds": 0.1},
        },
    )
