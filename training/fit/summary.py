"""What a fit hands the command: the trained model for the pipeline's writer, and the summary it prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.common import FitResult
from training.spec import Trained


@dataclass
class Fitted:
    """A fitted model: `trained` for `training.pipeline.write_model`, `summary` lines for the terminal."""

    trained: Trained
    summary: list[str]
    extra_training: dict = field(default_factory=dict)


def training_section(fitted: Fitted, config: dict, seconds: float, processes: int) -> dict:
    """The card's `training` section."""
    fit: FitResult = fitted.trained.fit
    epochs_run = len(fit.history)
    return {
        "config": config,
        "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best_val_loss,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < int(config.get("epochs", epochs_run)),
        "seconds": round(seconds, 1),
        "processes": processes,
        "quick": False,
        **fitted.extra_training,
    }


def ratio_text(model: float, baseline: float) -> str:
    return f"{model / baseline:.3f}" if baseline > 0 else "n/a"


def verdict(model_name: str, model_mse: float, pca_name: str, pca_mse: float, split: str = "test") -> str:
    """One plain sentence: does the model beat PCA on `split`?"""
    if model_mse < pca_mse:
        return (
            f"the {model_name} beats {pca_name} on the {split} split: MSE {model_mse:.4g} vs {pca_mse:.4g} "
            f"(ratio {ratio_text(model_mse, pca_mse)})"
        )
    return (
        f"the {model_name} does NOT beat {pca_name} on the {split} split: MSE {model_mse:.4g} vs {pca_mse:.4g} "
        f"(ratio {ratio_text(model_mse, pca_mse)}); a linear projection does as well here"
    )
