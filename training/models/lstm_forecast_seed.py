"""lstm-forecast-seed: seed 000's "reduce and predict" model as written, beside our `lstm-forecast`.

    Bidirectional(LSTM(nHidden), merge_mode='concat') -> Dropout(0.1) -> Dense(64, relu) -> Dropout(0.1)
    -> Dense(nOutput)

It predicts the next step's values themselves (ours predicts the change from the last step, with one dropout
of 0.2). nHidden is left open by the seed: ours (64). Data, window, standardisation in the graph, optimiser and
schedule are ours, as in `lstm-forecast`.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.models import lstm_forecast
from training.spec import DataOptions, Trained

NAME = "lstm-forecast-seed"
SEED = "seed 000 (shared/seeds/000_*.txt), 'LSTM Autoencoder', 2 (reduce and predict)"


@dataclass
class Config(lstm_forecast.Config):
    dropout: float = 0.1
    dropout_after_dense: float = 0.1
    predict_change: bool = False


def train(cfg: Config, data: DataOptions) -> Trained:
    return lstm_forecast.train_forecaster(
        cfg,
        data,
        description="Seed 000's reduce-and-predict model as written: bidirectional LSTM (concat), dropout 0.1, "
        "dense 64 ReLU, dropout 0.1, dense output: the next step of all {channels} channels "
        "(compare with `lstm-forecast`)",
        extra_metrics={"seed": {"source": SEED, "ours": "lstm-forecast"}},
    )
