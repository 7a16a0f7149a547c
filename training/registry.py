"""Every model the project trains, by name. A model is a module with NAME, Config and train()."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module under training.models.
MODELS: dict[str, str] = {
    "dense": "dense",
    "dense-shallow": "dense_shallow",
    "conv": "conv",
    "conv-dense-latent": "conv_dense_latent",
    "denoise": "denoise",
    "lstm": "lstm",
    "lstm-anomaly": "lstm_anomaly",
    "lstm-forecast": "lstm_forecast",
    # The seed documents' designs as written, each beside ours (../shared/seeds/; issue 18).
    "dense-seed": "dense_seed",
    "conv-dense-latent-seed": "conv_dense_latent_seed",
    "conv-seed": "conv_seed",
    "noise-cancel-seed": "noise_cancel_seed",
    "lstm-seed": "lstm_seed",
    "lstm-forecast-seed": "lstm_forecast_seed",
    # Hours of training on 2 CPU cores: trained on its own (`make train-photo`), not by `all`.
    "photo": "photo",
}
# What `python -m training all` (and `make train`) trains, in this order: the digit and sequence models.
ALL: tuple[str, ...] = tuple(name for name in MODELS if name != "photo")


class UnknownModelError(ValueError):
    pass


def get(name: str) -> ModuleType:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} (or 'all')")
    return importlib.import_module(f"training.models.{MODELS[name]}")
