"""Fit vectors: a dense autoencoder d -> hidden -> K -> hidden -> d in raw units, measured beside PCA-K.

Per-column standardisation (the training rows' mean and std) is the graphs' first and last step, so `encode` takes
rows as they are in the file and `decode` / `reconstruct` give the file's units back; the network learns, and is
selected, on the standardised error (every column weighs the same). The anomaly score is that error per row.
PCA with K components is fitted on the same standardised training rows and measured on the same test rows;
`--pca-if-better` exports it (as a linear autoencoder with the same graphs) when it is better on the validation rows.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from training.data.errors import DataError
from training.export import GraphSpec, TensorSpec
from training.fit.choice import choice_metrics, export_line, pca_wins
from training.fit.clean import Vectors, column_stats, prepare_vectors, split_text
from training.fit.distributed import World
from training.fit.loop import settings_for, train_autoencoder
from training.fit.metrics import Errors, errors, threshold_section
from training.fit.nets import Autoencoder, dense_vectors, linear_vectors
from training.fit.options import FitOptions
from training.fit.pca import fit_pca
from training.fit.progress import Progress
from training.fit.summary import Fitted, verdict
from training.fit.tables import read_table
from training.spec import Gate, Trained

log = logging.getLogger("training.fit")


def default_latent(columns: int) -> int:
    """A quarter of the columns (at least 1, always fewer than the columns)."""
    return max(1, min(columns - 1, round(columns / 4)))


def default_hidden(columns: int) -> int:
    return max(16, min(256, 4 * columns))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _graphs(model: Autoencoder, columns: list[str], k: int, sample: np.ndarray) -> list[GraphSpec]:
    d = len(columns)
    shown = ", ".join(columns[:8]) + (", ..." if d > 8 else "")
    layout = f"N x {d}: the columns {shown} (input.columns), in this order"
    x = TensorSpec("x", ("batch", d), layout=layout, description="raw values in the data's own units (any finite)")
    z = TensorSpec("z", ("batch", k), layout=f"N x {k}", description=f"latent code ({k} numbers)")
    r = TensorSpec("reconstruction", ("batch", d), layout=layout, description="reconstruction in the data's units")
    s = TensorSpec("score", ("batch",), description="mean squared reconstruction error per row, in standardised units")
    one, odd = sample[:1], sample[:7]
    with torch.no_grad():
        z_one, z_odd = (model.encoder(torch.from_numpy(a)).numpy() for a in (one, odd))
    noise = np.random.default_rng(1).standard_normal(z_odd.shape).astype(np.float32)
    # The TorchScript exporter: 0.15 s a graph here against 4.6 s for dynamo, and the export's own checks (every
    # dynamic axis symbolic, ONNX Runtime = PyTorch) hold either way. Raw-unit outputs: relative parity tolerance.
    common = {"dynamo": False, "relative_parity": True}
    return [
        GraphSpec("encoder", model.encoder, [x], [z], [(one,), (odd,)], description="raw rows -> codes", **common),
        GraphSpec(
            "decoder",
            model.decoder,
            [z],
            [r],
            [(z_one,), (z_odd,), (noise,)],
            description="codes -> raw rows",
            **common,
        ),
        GraphSpec(
            "full",
            model,
            [x],
            [r, s],
            [(one,), (odd,)],
            description="raw rows -> reconstruction and anomaly score",
            **common,
        ),
    ]


def _measure(model: Autoencoder, data: Vectors) -> dict[str, Errors]:
    return {"val": errors(model, data.val), "test": errors(model, data.test)}


def _numbers(m: dict[str, Errors]) -> dict[str, float]:
    return {
        "val_mse_standardized": m["val"].mse,
        "test_mse_standardized": m["test"].mse,
        "val_mse_raw_units": m["val"].raw_mse,
        "test_mse_raw_units": m["test"].raw_mse,
    }


def fit_vectors(opts: FitOptions, progress: Progress, world: World) -> Fitted:
    """Read, check, split, train, measure beside PCA and describe the model (see the module docstring)."""
    table = read_table(
        opts.data,
        columns=opts.columns,
        ignore_columns=opts.ignore_columns,
        array=opts.array,
        header=opts.header,
        delimiter=opts.delimiter,
    )
    rows, fmt = table.rows, table.format
    progress.note(f"read {rows} rows x {len(table.columns)} columns from {opts.data} ({fmt})")
    data = prepare_vectors(
        table,
        fractions=opts.split,
        seed=opts.seed,
        impute=opts.impute,
        drop_constant=opts.drop_constant,
        warn=progress.warn,
    )
    del table
    d = len(data.columns)
    if d < 2:
        raise DataError(f"{opts.data}: one column left ({data.columns[0]!r}): an autoencoder needs at least two")
    k = opts.latent if opts.latent is not None else default_latent(d)
    if k >= d:
        raise ValueError(f"--latent {k}: the code must be smaller than the {d} columns, or nothing is compressed")
    if k > len(data.train):
        raise DataError(f"{opts.data}: {len(data.train)} training rows cannot fit a {k}-number code (--latent)")
    hidden = opts.hidden if opts.hidden is not None else default_hidden(d)

    mean, std = column_stats(data.train)
    torch.manual_seed(opts.seed)
    model = dense_vectors(mean, std, hidden, k)
    x_train = torch.from_numpy(data.train)
    settings = settings_for(opts, len(x_train))
    result = train_autoencoder(model, x_train, data.val, settings, progress, world)
    ae = _measure(model, data)
    std32 = np.maximum(std, 1e-6)
    pca = fit_pca(data.train, k, lambda block: (block - mean) / std32, opts.seed)
    pca_model = linear_vectors(mean, std32, pca.components, pca.centre)
    base = _measure(pca_model, data)

    use_pca = pca_wins(opts.pca_if_better, base["val"].mse, ae["val"].mse)
    chosen, chosen_errors = (pca_model, base) if use_pca else (model, ae)
    anomaly = threshold_section(
        chosen_errors["val"].scores,
        opts.quantile,
        "mean squared reconstruction error per row in standardised units (each column's error divided by its "
        "training std)",
        "rows",
    )
    test_above = float((chosen_errors["test"].scores > anomaly["threshold"]).mean())
    anomaly["test_fraction_above_threshold"] = test_above

    ae_n, pca_n = _numbers(ae), _numbers(base)
    pca_name = f"PCA-{k}"
    beats_test = ae_n["test_mse_standardized"] < pca_n["test_mse_standardized"]
    beats_val = ae_n["val_mse_standardized"] < pca_n["val_mse_standardized"]
    chosen_n = pca_n if use_pca else ae_n
    arch = f"{d}-{hidden}-{k}-{hidden}-{d}"
    n_train, n_val, n_test = len(data.train), len(data.val), len(data.test)
    split = f"{n_train} train / {n_val} validation / {n_test} test rows "
    split += f"({split_text(opts.split)}, random, seed {opts.seed})"
    metrics = {
        **chosen_n,
        "baselines": {f"pca_{k}_mse_standardized": pca_n["test_mse_standardized"]},
        "ratio_to_pca": chosen_n["test_mse_standardized"] / max(pca_n["test_mse_standardized"], 1e-300),
        "autoencoder": {"architecture": arch, **ae_n},
        "pca": {"components": k, "explained_variance": pca.explained_variance, **pca_n},
        "autoencoder_beats_pca": {"test": beats_test, "validation": beats_val},
        **choice_metrics(opts.pca_if_better, use_pca),
        "test_rows": n_test,
    }
    columns = data.columns
    description = (
        f"PCA-{k} as a linear autoencoder ({d} columns -> {k})"
        if use_pca
        else f"Dense autoencoder {arch} (ReLU, linear code and output)"
    ) + f" fitted on {opts.data.name}; standardisation inside the graphs (raw units in and out)"
    client = f"none: send raw rows of the {d} columns listed in input.columns, in that order, in the data's units"
    if data.dropped_constant:
        client += f" (constant columns dropped: {', '.join(data.dropped_constant)}; do not send them)"
    if data.imputed:
        client += (
            f"; missing values were imputed with the training rows' {opts.impute} (preprocessing.imputed): fill "
            "them the same way before sending"
        )
    preprocessing = {
        "client": client,
        "in_graph": "per-column standardisation with the training rows' mean and std; decode and reconstruct "
        "return raw units",
        "column_mean": dict(zip(columns, mean.tolist(), strict=True)),
        "column_std": dict(zip(columns, std.tolist(), strict=True)),
        "dropped_constant_columns": data.dropped_constant,
        "imputed": {"rule": opts.impute, "columns": data.imputed} if data.imputed else None,
    }
    trained = Trained(
        kind="fit-pca" if use_pca else "fit-dense",
        description=description,
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=_graphs(chosen, columns, k, data.test),
        metrics=metrics,
        gates=[
            Gate(
                f"test MSE (standardised) <= {pca_name}",
                chosen_n["test_mse_standardized"],
                pca_n["test_mse_standardized"],
            )
        ],
        data={
            "source": str(opts.data),
            "format": fmt,
            "sha256": file_sha256(opts.data),
            "rows": rows,
            "columns": columns,
            "split": split,
        },
        fit=result,
        preprocessing=preprocessing,
        sections={
            "input": {"layout": "vector", "range": None, "columns": columns},  # no image form: no `image`
            "latent": {"numbers": k, "shape": ["batch", k]},
            "anomaly": anomaly,
        },
    )
    summary = [
        f"data: {rows} rows x {d} columns from {opts.data}; {split}",
        f"autoencoder {arch}: test MSE {ae_n['test_mse_standardized']:.4g} standardised, "
        f"{ae_n['test_mse_raw_units']:.4g} raw units (validation {ae_n['val_mse_standardized']:.4g})",
        f"{pca_name} ({pca.explained_variance:.1%} of the variance): test MSE {pca_n['test_mse_standardized']:.4g} "
        f"standardised, {pca_n['test_mse_raw_units']:.4g} raw units (validation {pca_n['val_mse_standardized']:.4g})",
        verdict("autoencoder", ae_n["test_mse_standardized"], pca_name, pca_n["test_mse_standardized"]),
    ]
    line = export_line(opts.pca_if_better, use_pca, pca_name, beats_test)
    summary.extend([line] if line else [])
    summary.append(
        f"anomaly threshold {anomaly['threshold']:.4g} ({anomaly['threshold_rule']}); "
        f"{test_above:.1%} of the test rows are above it"
    )
    return Fitted(trained, summary, {"batch_size": settings.batch_size})
