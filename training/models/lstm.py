"""lstm: per-timestep feature reduction of multivariate series (BasicMotions, 6 channels -> k = 3).

Bidirectional LSTM encoder (sum merge, sequences returned) to k latent features per step, bidirectional LSTM
decoder, per-timestep dense output back to the channel count. encode: [N, T, 6] -> [N, T, k];
decode: [N, T, k] -> [N, T, 6]; full: reconstruction plus a per-series anomaly score.
The module also trains `lstm-anomaly` (the same network fitted one-class): see lstm_anomaly.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.baselines import PCA, mse
from training.common import TrainConfig, anomaly_section, batches, fit, predict, seed_everything
from training.data.timeseries import load_basic_motions
from training.export import GraphSpec, TensorSpec
from training.models.sequence import BiLSTMSum, Standardizer, random_crops, split_train_val, standardisation_note
from training.spec import DataOptions, Gate, Trained

NAME = "lstm"


@dataclass
class Config(TrainConfig):
    latent: int = 3  # per-step code: 3 numbers for 6 channels, a real bottleneck
    hidden: int = 32
    crop: int = 50  # training windows: random crops of this many steps
    epochs: int = 400
    batch_size: int = 16
    lr: float = 5e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.2


class Encoder(nn.Module):
    def __init__(self, norm: Standardizer, channels: int, hidden: int, latent: int):
        super().__init__()
        self.norm = norm
        self.rnn1 = BiLSTMSum(channels, hidden)
        self.rnn2 = BiLSTMSum(hidden, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn2(self.rnn1(self.norm(x)))


class Decoder(nn.Module):
    def __init__(self, norm: Standardizer, channels: int, hidden: int, latent: int):
        super().__init__()
        self.norm = norm
        self.rnn = BiLSTMSum(latent, hidden)
        self.out = nn.Linear(hidden, channels)  # applied per time step

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm.inverse(self.out(self.rnn(z)))


class SequenceAE(nn.Module):
    """encoder -> decoder; the score is the mean squared error over steps and channels in standardised units."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int, latent: int):
        super().__init__()
        channels = len(mean)
        self.latent = latent
        self.norm = Standardizer(mean, std)
        self.encoder: nn.Module = Encoder(self.norm, channels, hidden, latent)
        self.decoder: nn.Module = Decoder(self.norm, channels, hidden, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.decoder(self.encoder(x))
        return r, ((r - x) / self.norm.std).pow(2).mean(dim=(1, 2))

    def standardized_error(self, x: torch.Tensor) -> torch.Tensor:
        r = self.decoder(self.encoder(x))
        return ((r - x) / self.norm.std).pow(2).mean()


def fit_sequence_ae(
    cfg: Config, x_train: np.ndarray, x_val: np.ndarray, make: type[SequenceAE] = SequenceAE
) -> tuple[SequenceAE, object]:
    """Train on random crops of the training series; select on the validation series' error."""
    gen = seed_everything(cfg.seed, cfg.threads)
    flat = x_train.reshape(-1, x_train.shape[2])
    model = make(flat.mean(0), flat.std(0), cfg.hidden, cfg.latent)
    xt = torch.from_numpy(x_train)
    xv = torch.from_numpy(x_val)

    def train_batches(epoch: int):
        for idx in batches(len(xt), cfg.batch_size, gen):
            yield (random_crops(xt[idx], cfg.crop, gen),)

    steps = (len(xt) + cfg.batch_size - 1) // cfg.batch_size
    result = fit(
        model,
        train_batches,
        lambda m, b: m.standardized_error(b[0]),
        lambda m: float(m.standardized_error(xv)),
        cfg,
        steps,
    )
    return model, result


def sequence_tensors(channels: int, latent: int) -> tuple[TensorSpec, TensorSpec, TensorSpec, TensorSpec]:
    x = TensorSpec(
        "x",
        ("batch", "time", channels),
        layout="N x T x C (time-major, channels last)",
        description="raw sensor values (standardised inside the graph with the training set's per-channel stats)",
    )
    z = TensorSpec(
        "z",
        ("batch", "time", latent),
        value_range=(-2.0, 2.0),
        layout=f"N x T x {latent}",
        description=f"{latent} latent features per time step",
    )
    r = TensorSpec("reconstruction", ("batch", "time", channels), layout="N x T x C", description="reconstruction")
    s = TensorSpec(
        "score", ("batch",),
        description="mean squared reconstruction error over steps and channels, in standardised units",
    )  # fmt: skip
    return x, z, r, s


def sequence_graphs(model: SequenceAE, sample: np.ndarray) -> list[GraphSpec]:
    """encoder / decoder / full graphs with parity at batch 1, an odd batch and another sequence length."""
    channels, latent = sample.shape[2], model.latent
    x, z, r, s = sequence_tensors(channels, latent)
    parity_x = [(sample[:1],), (sample[:5],), (sample[:3, :37],)]
    with torch.no_grad():
        parity_z = [(model.encoder(torch.from_numpy(a[0])).numpy(),) for a in parity_x]
    return [
        GraphSpec("encoder", model.encoder, [x], [z], parity_x, dynamo=False, description="series -> per-step code"),
        GraphSpec("decoder", model.decoder, [z], [r], parity_z, dynamo=False, description="per-step code -> series"),
        GraphSpec(
            "full",
            model,
            [x],
            [r, s],
            parity_x,
            dynamo=False,
            description="series -> reconstruction and per-series anomaly score",
        ),
    ]


def per_step_pca_mse(model: SequenceAE, k: int, x_train: np.ndarray, x_test: np.ndarray) -> float:
    """Per-step PCA to k features, fitted on standardised training steps; error in standardised units."""
    mean, std = model.norm.mean.numpy(), model.norm.std.numpy()
    tr = ((x_train - mean) / std).reshape(-1, x_train.shape[2])
    te = ((x_test - mean) / std).reshape(-1, x_test.shape[2])
    return mse(PCA(k).fit(tr).reconstruct(te), te)


def sequence_section(channels: list[str], window: int, stride: int) -> dict:
    return {
        "layout": "sequence",
        "range": None,
        "sequence": {
            "channels": len(channels),
            "channel_names": channels,
            "window": window,
            "stride": stride,
            "min_length": 2,
            "note": "any length works; longer series are scored in sliding windows of `window` steps",
        },
    }


def train(cfg: Config, data: DataOptions) -> Trained:
    return train_sequence_ae(
        cfg,
        data,
        SequenceAE,
        "Bidirectional LSTM sequence autoencoder: {channels} channels -> {latent} latent features per time step "
        "(feature reduction) -> reconstruction",
    )


def train_sequence_ae(
    cfg: Config, data: DataOptions, make: type[SequenceAE], description: str, extra_metrics: dict | None = None
) -> Trained:
    """Fit `make` on BasicMotions and describe it; `description` may name `{channels}` and `{latent}`."""
    train_set, test_set, provenance = load_basic_motions()
    tr_idx, va_idx = split_train_val(train_set.y, cfg.val_fraction, data.seed)
    x_train, x_val, x_test = train_set.x[tr_idx], train_set.x[va_idx], test_set.x
    if cfg.quick:
        x_train, x_val, x_test = x_train[:8], x_val[:4], x_test[:8]
    model, result = fit_sequence_ae(cfg, x_train, x_val, make)

    recon = predict(lambda t: model(t)[0], x_test)
    std = model.norm.std.numpy()
    test_err = mse(recon / std, x_test / std)
    pca_err = per_step_pca_mse(model, cfg.latent, x_train, x_test)
    scores = predict(lambda t: model(t)[1], x_val)
    channels = provenance["channels"]
    return Trained(
        kind="lstm",
        description=description.format(channels=len(channels), latent=cfg.latent),
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=sequence_graphs(model, x_test),
        metrics={
            "test_mse_standardized": test_err,
            "test_mse_raw_units": mse(recon, x_test),
            "baselines": {f"per_step_pca_{cfg.latent}_mse_standardized": pca_err},
            "ratio_to_pca": test_err / pca_err,
            "test_series": len(x_test),
            **(extra_metrics or {}),
        },
        gates=[Gate(f"test MSE below per-step PCA-{cfg.latent}", test_err, pca_err)],
        data={
            **provenance,
            "split": f"TRAIN {len(x_train)} train / {len(x_val)} val (stratified); TEST {len(x_test)}",
        },
        fit=result,
        preprocessing=standardisation_note(model.norm, channels),
        sections={
            "input": sequence_section(channels, window=100, stride=50),
            "latent": {"numbers_per_step": cfg.latent, "shape": ["batch", "time", cfg.latent]},
            "anomaly": anomaly_section(
                scores,
                "mean squared reconstruction error in standardised units per window",
                "99th percentile of the validation series' scores",
            ),
        },
    )
