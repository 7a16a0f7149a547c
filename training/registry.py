"""Every model the project trains, by name. A model is a module with NAME, Config and train()."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module under training.models; `all` trains them in this order.
MODELS: dict[str, str] = {
    "dense": "dense",
    "dense-shallow": "dense_shallow",
    "conv": "conv",
    "conv-dense-latent": "conv_dense_latent",
    "denoise": "denoise",
    "lstm": "lstm",
    "lstm-anomaly": "lstm_anomaly",
    "lstm-forecast": "lstm_forecast",
}


class UnknownModelError(ValueError):
    pass


def get(name: str) -> ModuleType:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} (or 'all')")
    return importlib.import_module(f"training.models.{MODELS[name]}")
