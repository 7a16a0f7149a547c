"""lstm-anomaly: the lstm sequence autoencoder fitted one-class, serving anomaly scores.

BasicMotions used one-class: the `normal` activity's training series are all it sees; the test set's other
three activities are the anomalies. A series is scored in sliding windows (mean squared reconstruction error
in standardised units per window) and its score is the worst window; the threshold is the 99th percentile of
the validation normals' window scores (validation normals only: no anomaly is seen before the test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.baselines import precision_recall, roc_auc
from training.common import anomaly_section, predict
from training.data.mnist import stratified_split
from training.data.timeseries import load_basic_motions
from training.models import lstm
from training.models.sequence import standardisation_note, windows
from training.spec import DataOptions, Gate, Trained

NAME = "lstm-anomaly"


@dataclass
class Config(lstm.Config):
    normal: str = "Walking"
    window: int = 50
    stride: int = 10
    crop: int = 50
    epochs: int = 300
    batch_size: int = 8
    val_series: int = 3


def series_scores(model: lstm.SequenceAE, x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Worst sliding-window score of each series (the service's rule for series longer than the window)."""
    per_window = predict(lambda t: model(t)[1], windows(x, window, stride))
    return per_window.reshape(-1, len(x)).max(axis=0)


def train(cfg: Config, data: DataOptions) -> Trained:
    train_set, test_set, provenance = load_basic_motions()
    if cfg.normal not in train_set.class_names:
        raise ValueError(f"lstm-anomaly: normal class {cfg.normal!r} not in {train_set.class_names}")
    normal = train_set.x[train_set.y == cfg.normal]
    tr_idx, va_idx = stratified_split(np.zeros(len(normal)), (len(normal) - cfg.val_series, cfg.val_series), data.seed)
    x_train, x_val = normal[tr_idx], normal[va_idx]
    x_test, y_test = test_set.x, test_set.y
    if cfg.quick:
        x_train, x_val = x_train[:4], x_val[:2]
        keep = np.concatenate([np.flatnonzero(y_test == c)[:2] for c in test_set.class_names])
        x_test, y_test = x_test[keep], y_test[keep]
    model, result = lstm.fit_sequence_ae(cfg, x_train, x_val)

    val_window_scores = predict(lambda t: model(t)[1], windows(x_val, cfg.window, cfg.stride))
    threshold = float(np.quantile(val_window_scores, 0.99))
    scores = series_scores(model, x_test, cfg.window, cfg.stride)
    is_anomaly = y_test != cfg.normal
    auc = roc_auc(scores, is_anomaly)
    precision, recall = precision_recall(scores, is_anomaly, threshold)
    per_class = {
        c: roc_auc(scores[(y_test == c) | ~is_anomaly], is_anomaly[(y_test == c) | ~is_anomaly])
        for c in test_set.class_names
        if c != cfg.normal
    }
    channels = provenance["channels"]
    return Trained(
        kind="lstm",
        description=f"Bidirectional LSTM sequence autoencoder fitted one-class on BasicMotions '{cfg.normal}' "
        f"series: anomaly scores from reconstruction error ({len(channels)} channels -> {cfg.latent} per step)",
        tasks=["encode", "decode", "reconstruct", "score"],
        graphs=lstm.sequence_graphs(model, x_test),
        metrics={
            "roc_auc": auc,
            "roc_auc_by_anomaly_class": per_class,
            "precision_at_threshold": precision,
            "recall_at_threshold": recall,
            "false_positive_rate_at_threshold": float((scores[~is_anomaly] > threshold).mean()),
            "test_series": {"normal": int((~is_anomaly).sum()), "anomalous": int(is_anomaly.sum())},
            "series_score": "worst sliding window",
        },
        gates=[Gate("ROC AUC on held-out series > 0.5 (better than chance)", auc, 0.5, higher_is_better=True)],
        data={
            **provenance,
            "split": f"normal class {cfg.normal!r}: TRAIN {len(x_train)} train / {len(x_val)} val; "
            f"TEST all {len(x_test)} series ({int(is_anomaly.sum())} of other classes are anomalies)",
        },
        fit=result,
        preprocessing=standardisation_note(model.norm, channels),
        sections={
            "input": lstm.sequence_section(channels, window=cfg.window, stride=cfg.stride),
            "latent": {"numbers_per_step": cfg.latent, "shape": ["batch", "time", cfg.latent]},
            "anomaly": anomaly_section(
                val_window_scores,
                "mean squared reconstruction error in standardised units per window; a longer series scores its "
                "worst window",
                "99th percentile of the validation normals' window scores",
                normal_class=cfg.normal,
            ),
        },
    )
