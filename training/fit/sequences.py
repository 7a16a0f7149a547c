"""Fit series: a window-level LSTM autoencoder (anomaly scores) or, with `--forecast H`, an LSTM forecaster.

Splits: by series (random, seeded) when there are enough series, else every series is cut in time (the first 70 %
trains, the next 15 % validates, the last 15 % tests). Training samples are sliding windows (`--window`,
`--stride`; the service scores longer series in the same windows, `app.core.cards.window_starts`). Per-channel
standardisation (the training steps' mean and std) is the graphs' first step, so clients send raw values.
Baselines on the same test windows: PCA with K components of the flattened standardised windows for the
autoencoder, persistence (the last value) for the forecaster. `--pca-if-better` exports that PCA instead of the
LSTM autoencoder when it is not worse on the validation windows (`training.fit.nets.SeriesPca`: the same graphs,
any length from the window up). With `--time-column`, the regular step is recorded (`step_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from app.core.cards import window_starts
from training.baselines import mse
from training.data.errors import DataError
from training.export import GraphSpec, TensorSpec
from training.fit.choice import choice_metrics, export_line, pca_wins
from training.fit.clean import minimum_rows, split_rows, split_text
from training.fit.distributed import World
from training.fit.loop import settings_for, train_autoencoder, train_loop
from training.fit.metrics import errors, threshold_section
from training.fit.nets import Forecaster, SeriesAE, SeriesPca
from training.fit.options import FitOptions
from training.fit.pca import fit_pca
from training.fit.progress import Progress
from training.fit.series import SeriesSet, read_series
from training.fit.summary import Fitted, verdict
from training.spec import Gate, Trained

MAX_DEFAULT_WINDOW = 50
MIN_PIECE_STEPS = 4
PREDICT_BATCH = 4096


@dataclass
class Parts:
    """The series of each split part and how the split was made."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    how: str

    def all(self) -> list[np.ndarray]:
        return [*self.train, *self.val, *self.test]


@dataclass
class Job:
    """Everything both fits need once the series are read, split and measured."""

    opts: FitOptions
    data: SeriesSet
    parts: Parts
    source: dict
    mean: np.ndarray
    std: np.ndarray
    window: int
    stride: int
    progress: Progress
    world: World


def split_series(data: SeriesSet, opts: FitOptions, what: str) -> Parts:
    """By series when there are enough of them, else in time within each series (see the module docstring)."""
    series, fractions = data.series, opts.split
    if len(series) >= minimum_rows(fractions):
        s = split_rows(len(series), fractions, opts.seed, what, unit="series")
        pick = lambda idx: [series[i] for i in idx]  # noqa: E731
        how = (
            f"{len(s.train)} / {len(s.val)} / {len(s.test)} series ({split_text(fractions)}, random, seed {opts.seed})"
        )
        return Parts(pick(s.train), pick(s.val), pick(s.test), how)
    cuts = [(round(len(x) * fractions[0]), round(len(x) * (fractions[0] + fractions[1]))) for x in series]
    pieces = [(x[:a], x[a:b], x[b:]) for x, (a, b) in zip(series, cuts, strict=True)]
    shortest = min(len(p) for trio in pieces for p in trio)
    if shortest < MIN_PIECE_STEPS:
        need_steps = int(np.ceil(MIN_PIECE_STEPS / min(fractions))) + 1
        raise DataError(
            f"{what}: {len(series)} series of {min(data.lengths)}-{max(data.lengths)} steps: too few to split by "
            f"series (at least {minimum_rows(fractions)} are needed) and too short to split in time (each needs about "
            f"{need_steps} steps so every part keeps {MIN_PIECE_STEPS})"
        )
    how = (
        f"in time: the first {100 * fractions[0]:g} % of each of the {len(series)} series trains, the next "
        f"{100 * fractions[1]:g} % validates, the last {100 * fractions[2]:g} % tests"
    )
    return Parts([p[0] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces], how)


def sliding_windows(series: list[np.ndarray], window: int, stride: int) -> np.ndarray:
    """Every window [W, C] of every series (the service's window starts), stacked [n, W, C]."""
    return np.stack([x[s : s + window] for x in series for s in window_starts(len(x), window, stride)])


def forecast_pairs(series: list[np.ndarray], window: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(window, the value `horizon` steps after its end) pairs of every series."""
    inputs, targets = [], []
    for x in series:
        for end in range(window, len(x) - horizon + 1, stride):
            inputs.append(x[end - window : end])
            targets.append(x[end + horizon - 1])
    return np.stack(inputs), np.stack(targets)


def _too_short(parts: Parts, need: int, option: str, what: str) -> None:
    short = [len(x) for x in parts.all() if len(x) < need]
    if short:
        raise DataError(
            f"{what}: {len(short)} series (or split pieces) have fewer than the {need} steps {option} needs (shortest "
            f"{min(short)}); pass a smaller --window"
        )


def _channel_stats(train: list[np.ndarray], names: list[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.concatenate(train).astype(np.float64)
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    constant = [n for n, s, m in zip(names, std, mean, strict=True) if s == 0 or s <= 1e-6 * abs(m)]
    if constant:
        raise DataError(
            f"{what}: channel(s) {constant} are constant over the training steps: they carry no information and "
            "cannot be standardised; leave them out (--ignore-columns for CSV files)"
        )
    return mean, std


def _preprocessing(job: Job) -> dict:
    names, imputed = job.data.channels, job.data.imputed
    client = "none: send raw values, time-major [T, C] per series, channels in input.sequence.channel_names order"
    if job.data.time is not None:
        client += f" (rows in time order, one every {job.data.step_seconds:g} s; no time channel)"
    if imputed:
        client += (
            "; missing values were interpolated linearly along time within each series (preprocessing.imputed): "
            "fill gaps the same way before sending"
        )
    return {
        "client": client,
        "in_graph": "per-channel standardisation with the training steps' mean and std (outputs de-standardised)",
        "channel_mean": dict(zip(names, job.mean.tolist(), strict=True)),
        "channel_std": dict(zip(names, job.std.tolist(), strict=True)),
        "imputed": {"rule": "linear", "channels": imputed} if imputed else None,
    }


def _sequence_section(job: Job, min_length: int) -> dict:
    return {
        "layout": "sequence",
        "range": None,
        "sequence": {
            "channels": len(job.data.channels),
            "channel_names": job.data.channels,
            "window": job.window,
            "stride": job.stride,
            "min_length": min_length,
            "step_seconds": job.data.step_seconds,
        },
    }


def _shorter(x: np.ndarray) -> np.ndarray:
    """A parity input of another length than the window (the time axis must stay dynamic)."""
    return x[:3, : max(2, x.shape[1] // 2)] if x.shape[1] > 2 else np.concatenate([x[:3], x[:3]], axis=1)


@torch.no_grad()
def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            model(torch.from_numpy(np.ascontiguousarray(x[i : i + PREDICT_BATCH]))).numpy()
            for i in range(0, len(x), PREDICT_BATCH)
        ]
    )


def fit_series(opts: FitOptions, progress: Progress, world: World) -> Fitted:
    """Read, split, window, train, measure beside the baseline and describe the model (module docstring)."""
    what = str(opts.data)
    data = read_series(
        opts.data,
        id_column=opts.id_column,
        columns=opts.columns,
        ignore_columns=opts.ignore_columns,
        header=opts.header,
        delimiter=opts.delimiter,
        time_column=opts.time_column,
        impute=opts.impute == "linear",
    )
    lengths = data.lengths
    progress.note(
        f"read {len(lengths)} series of {min(lengths)}-{max(lengths)} steps x {len(data.channels)} channels "
        f"({data.format})"
    )
    if data.imputed:
        filled = ", ".join(f"{name} ({count})" for name, count in data.imputed.items())
        progress.warn(f"interpolated missing values along time (--impute linear): {filled}")
    parts = split_series(data, opts, what)
    shortest = min(len(x) for x in parts.all())
    horizon = opts.forecast
    if horizon is not None:
        window = opts.window or min(MAX_DEFAULT_WINDOW, max(2, (shortest - horizon) // 2))
        stride = opts.stride or 1
        _too_short(parts, window + horizon, f"a window of {window} plus the horizon {horizon}", what)
    else:
        window = opts.window or min(MAX_DEFAULT_WINDOW, shortest)
        stride = opts.stride or max(1, window // 2)
        _too_short(parts, window, f"a window of {window}", what)
    mean, std = _channel_stats(parts.train, data.channels, what)
    torch.manual_seed(opts.seed)
    source = {
        "source": what,
        "format": data.format,
        "series": len(lengths),
        "lengths": {"min": min(lengths), "max": max(lengths)},
        "channels": data.channels,
        "split": parts.how,
        **({"time": data.time} if data.time is not None else {}),
    }
    job = Job(opts, data, parts, source, mean, std, window, stride, progress, world)
    return _fit_autoencoder(job) if horizon is None else _fit_forecaster(job, horizon)


def _longer(x: np.ndarray) -> np.ndarray:
    """A parity input longer than the window (PCA's graphs take any length from the window up)."""
    return np.concatenate([x[:3], np.roll(x, 1, axis=0)[:3]], axis=1)


def _autoencoder_graphs(model: torch.nn.Module, k: int, job: Job, x_test: np.ndarray, pca: bool) -> list[GraphSpec]:
    """encoder (series -> code), decoder (code -> a window), full (series -> reconstruction, score)."""
    window, channels = job.window, len(job.data.channels)
    takes = (
        f"raw values, at least {window} steps (standardised inside the graph; a longer series: every {window}-step "
        "window, stride 1, is projected and the codes averaged; each step reconstructed as the average over its "
        "windows)"
        if pca
        else f"raw values (trained on windows of {window} steps; standardised inside the graph)"
    )
    x_spec = TensorSpec(
        "x", ("batch", "time", channels), layout="N x T x C (time-major, channels last)", description=takes
    )
    z_spec = TensorSpec("z", ("batch", k), layout=f"N x {k}", description=f"{k} numbers per window")
    r_fixed = TensorSpec(
        "reconstruction", ("batch", window, channels), layout=f"N x {window} x C", description="a window, raw units"
    )
    r_spec = TensorSpec("reconstruction", ("batch", "time", channels), layout="N x T x C", description="raw units")
    s_spec = TensorSpec("score", ("batch",), description="mean squared error over steps and channels, standardised")
    other = _longer(x_test) if pca else _shorter(x_test)  # the time axis must stay dynamic
    parity_x: list[tuple[np.ndarray, ...]] = [(x_test[:1],), (x_test[:5],), (other,)]
    encoder, decoder = cast(torch.nn.Module, model.encoder), cast(torch.nn.Module, model.decoder)
    with torch.no_grad():
        parity_z: list[tuple[np.ndarray, ...]] = [(encoder(torch.from_numpy(a[0])).numpy(),) for a in parity_x]
    common = {"dynamo": False, "relative_parity": True}  # LSTMs: the TorchScript exporter (PITFALLS.md)
    return [
        GraphSpec("encoder", encoder, [x_spec], [z_spec], parity_x, description="series -> code", **common),
        GraphSpec("decoder", decoder, [z_spec], [r_fixed], parity_z, description="code -> window", **common),
        GraphSpec(
            "full", model, [x_spec], [r_spec, s_spec], parity_x, description="series -> reconstruction, score", **common
        ),
    ]


def _fit_autoencoder(job: Job) -> Fitted:
    opts, window = job.opts, job.window
    channels = len(job.data.channels)
    x_train, x_val, x_test = (
        sliding_windows(p, window, job.stride) for p in (job.parts.train, job.parts.val, job.parts.test)
    )
    values = window * channels
    k = opts.latent if opts.latent is not None else max(2, min(16, values // 8))
    if k >= values:
        raise ValueError(
            f"--latent {k}: the code must be smaller than a window's {values} values ({window} x {channels})"
        )
    if k > len(x_train):
        raise DataError(f"{opts.data}: {len(x_train)} training windows cannot fit a {k}-number code (--latent)")
    hidden = opts.hidden or 32
    model = SeriesAE(job.mean, job.std, hidden, k, window)
    xt = torch.from_numpy(x_train)
    settings = settings_for(opts, len(xt))
    result = train_autoencoder(model, xt, x_val, settings, job.progress, job.world)
    val, test = errors(model, x_val), errors(model, x_test)
    std32 = np.maximum(job.std, 1e-6)
    pca = fit_pca(((x_train - job.mean) / std32).reshape(len(x_train), -1), k, seed=opts.seed)
    # Measured through the module `--pca-if-better` exports (on a window it is exactly PCA's reconstruction).
    pca_model = SeriesPca(job.mean, std32, pca.components, pca.centre, window)
    base_val, base_test = errors(pca_model, x_val), errors(pca_model, x_test)
    pca_val, pca_test = base_val.mse, base_test.mse
    use_pca = pca_wins(opts.pca_if_better, pca_val, val.mse)
    chosen: torch.nn.Module = pca_model if use_pca else model
    c_val, c_test = (base_val, base_test) if use_pca else (val, test)
    anomaly = threshold_section(
        c_val.scores,
        opts.quantile,
        "mean squared reconstruction error per window in standardised units; a longer series scores its worst window",
        "windows",
    )
    anomaly["test_fraction_above_threshold"] = float((c_test.scores > anomaly["threshold"]).mean())
    pca_name = f"PCA-{k} of the flattened windows"
    arch = f"LSTM {hidden}, code {k}"
    metrics = {
        "test_mse_standardized": c_test.mse,
        "test_mse_raw_units": c_test.raw_mse,
        "val_mse_standardized": c_val.mse,
        "baselines": {f"pca_{k}_window_mse_standardized": pca_test},
        "ratio_to_pca": c_test.mse / max(pca_test, 1e-300),
        "autoencoder": {
            "architecture": arch,
            "test_mse_standardized": test.mse,
            "test_mse_raw_units": test.raw_mse,
            "val_mse_standardized": val.mse,
        },
        "pca": {
            "components": k,
            "explained_variance": pca.explained_variance,
            "val_mse_standardized": pca_val,
            "test_mse_standardized": pca_test,
            "test_mse_raw_units": base_test.raw_mse,
        },
        "autoencoder_beats_pca": {"test": bool(test.mse < pca_test), "validation": bool(val.mse < pca_val)},
        **choice_metrics(opts.pca_if_better, use_pca),
        "test_windows": len(x_test),
    }
    what = (
        f"PCA-{k} of the flattened standardised windows as a linear sequence autoencoder"
        if use_pca
        else "LSTM sequence autoencoder"
    )
    trained = Trained(
        kind="fit-pca-series" if use_pca else "fit-lstm",
        description=f"{what} fitted on {opts.data.name}: windows of {window} steps x {channels} channel(s) -> {k} "
        "numbers -> reconstruction; anomaly scores",
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=_autoencoder_graphs(chosen, k, job, x_test, use_pca),
        metrics=metrics,
        gates=[Gate(f"test MSE (standardised) <= {pca_name}", c_test.mse, pca_test)],
        data={**job.source, "windows": {"train": len(x_train), "val": len(x_val), "test": len(x_test)}},
        fit=result,
        preprocessing=_preprocessing(job),
        sections={
            "input": _sequence_section(job, window),
            "latent": {"numbers": k, "per": f"series (trained on windows of {window} steps)", "shape": ["batch", k]},
            "anomaly": anomaly,
        },
    )
    summary = [
        f"data: {len(job.data.series)} series; split {job.parts.how}; windows of {window} steps, stride "
        f"{job.stride}: {len(x_train)} / {len(x_val)} / {len(x_test)}",
        f"autoencoder ({arch}): test MSE {test.mse:.4g} standardised, {test.raw_mse:.4g} raw units (validation "
        f"{val.mse:.4g})",
        f"{pca_name}: test MSE {pca_test:.4g} standardised (validation {pca_val:.4g})",
        verdict("autoencoder", test.mse, pca_name, pca_test),
    ]
    line = export_line(opts.pca_if_better, use_pca, f"PCA-{k}", test.mse < pca_test)
    summary.extend([line] if line else [])
    summary.append(f"anomaly threshold {anomaly['threshold']:.4g} ({anomaly['threshold_rule']})")
    return Fitted(trained, summary, {"batch_size": settings.batch_size})


def _fit_forecaster(job: Job, horizon: int) -> Fitted:
    opts, window, channels = job.opts, job.window, len(job.data.channels)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        forecast_pairs(p, window, horizon, job.stride) for p in (job.parts.train, job.parts.val, job.parts.test)
    )
    hidden = opts.hidden or 32
    model = Forecaster(job.mean, job.std, hidden)
    scale = torch.as_tensor(np.maximum(job.std, 1e-6), dtype=torch.float32)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)

    def loss(net: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return ((net(batch[0]) - batch[1]) / scale).pow(2).mean()

    s = scale.numpy()
    settings = settings_for(opts, len(xt))
    result = train_loop(
        model,
        len(xt),
        lambda idx: (xt[idx], yt[idx]),
        loss,
        lambda m: mse(_predict(m, x_val) / s, y_val / s),
        settings,
        job.progress,
        job.world,
    )
    pred = _predict(model, x_test)
    model_err = mse(pred / s, y_test / s)
    persistence = mse(x_test[:, -1] / s, y_test / s)
    x_spec = TensorSpec(
        "x", ("batch", "time", channels), layout="N x T x C (time-major, channels last)",
        description=f"the last T raw steps (trained with T = {window})",
    )  # fmt: skip
    y_spec = TensorSpec(
        "forecast", ("batch", channels), layout="N x C", description=f"every channel {horizon} step(s) on, raw units"
    )
    parity: list[tuple[np.ndarray, ...]] = [(x_test[:1],), (x_test[:7],), (_shorter(x_test),)]
    graph = GraphSpec(
        "full", model, [x_spec], [y_spec], parity, dynamo=False, relative_parity=True, description="window -> forecast"
    )
    trained = Trained(
        # The kind of the project's own forecaster: models/README.md reports it beside persistence.
        kind="lstm-forecast",
        description=f"LSTM forecaster fitted on {opts.data.name}: the last {window} steps of {channels} channel(s) -> "
        f"every channel {horizon} step(s) later",
        tasks=["predict"],
        graphs=[graph],
        metrics={
            "test_mse_standardized": model_err,
            "test_mse_raw_units": mse(pred, y_test),
            "baselines": {"persistence_mse_standardized": persistence},
            "ratio_to_persistence": model_err / max(persistence, 1e-300),
            "beats_persistence": bool(model_err < persistence),
            "test_windows": len(x_test),
        },
        gates=[Gate("test MSE below persistence (the last value)", model_err, persistence)],
        data={**job.source, "windows": {"train": len(x_train), "val": len(x_val), "test": len(x_test)}},
        fit=result,
        preprocessing=_preprocessing(job),
        sections={
            "input": _sequence_section(job, 2),
            "forecast": {"horizon": horizon, "window": window, "step_seconds": job.data.step_seconds},
        },
    )
    summary = [
        f"data: {len(job.data.series)} series; split {job.parts.how}; windows of {window} steps -> {horizon} step(s) "
        f"on: {len(x_train)} / {len(x_val)} / {len(x_test)}",
        f"forecaster (LSTM {hidden}): test MSE {model_err:.4g} standardised",
        f"persistence (the last value): test MSE {persistence:.4g} standardised",
        verdict("forecaster", model_err, "persistence", persistence),
    ]
    return Fitted(trained, summary, {"batch_size": settings.batch_size})
