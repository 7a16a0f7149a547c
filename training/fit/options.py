"""What one `python -m training fit` run was asked to do: every option, typed, with its default.

The card records these (`training.config`), so a model says how it was made.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.core.cards import MODEL_NAME_PATTERN

Kind = Literal["vectors", "images", "series"]
KINDS: tuple[Kind, ...] = ("vectors", "images", "series")


@dataclass
class FitOptions:
    """Options of one fit; `None` means "decide from the data" where the help says so."""

    data: Path
    name: str
    kind: Kind | None = None
    latent: int | None = None
    hidden: int | None = None
    out: Path = Path("models")
    publish: Path | None = None
    replace: bool = False
    # Vectors.
    columns: list[str] | None = None
    ignore_columns: list[str] | None = None
    array: str | None = None
    header: Literal["auto", "yes", "no"] = "auto"
    delimiter: str | None = None
    impute: Literal["mean", "median", "linear"] | None = None
    drop_constant: bool = False
    pca_if_better: bool = False
    # Images.
    size: int | None = None
    channels: Literal[1, 3] = 1
    arch: Literal["dense", "conv"] = "dense"
    # Series.
    id_column: str | None = None
    time_column: str | None = None
    window: int | None = None
    stride: int | None = None
    forecast: int | None = None
    # Splits and training.
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    epochs: int = 300
    patience: int = 20
    batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    quantile: float = 0.99
    threads: int = 1
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    command: list[str] = field(default_factory=list)

    def check(self) -> None:
        """ValueError naming the option when a value cannot work (before any data is read)."""
        if re.fullmatch(MODEL_NAME_PATTERN, self.name) is None:
            raise ValueError(
                f"--name {self.name!r}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter "
                "or digit (the service's model names)"
            )
        if not self.data.exists():
            raise ValueError(f"--data {self.data}: no such file or directory")
        if self.latent is not None and self.latent < 1:
            raise ValueError(f"--latent {self.latent}: must be at least 1")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"--hidden {self.hidden}: must be at least 1")
        if len(self.split) != 3 or any(f <= 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"--split {self.split}: three positive fractions (train, validation, test) summing to 1")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"--quantile {self.quantile}: must be strictly between 0 and 1")
        counts = (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--threads", self.threads))
        for option, value in counts:
            if value is not None and value < 1:
                raise ValueError(f"{option} {value}: must be at least 1")
        if self.patience < 1:
            raise ValueError(f"--patience {self.patience}: must be at least 1")
        if self.size is not None and self.size < 4:
            raise ValueError(f"--size {self.size}: images need at least 4 pixels per side")
        if self.size is not None and self.arch == "conv" and self.size % 4:
            raise ValueError(
                f"--size {self.size}: the conv autoencoder pools twice by 2, so the side must be a multiple of 4 "
                f"(e.g. {self.size + 4 - self.size % 4})"
            )
        for option, value in (("--window", self.window), ("--stride", self.stride), ("--forecast", self.forecast)):
            if value is not None and value < 1:
                raise ValueError(f"{option} {value}: must be at least 1")
        if self.pca_if_better and self.forecast is not None:
            raise ValueError(
                "--pca-if-better chooses between an autoencoder and PCA; a forecaster (--forecast) is measured "
                "against persistence instead: leave out one of the two"
            )

    def check_kind(self, kind: Kind) -> None:
        """ValueError naming the option when it does not apply to `kind` (once the kind is known)."""
        if self.time_column is not None and kind != "series":
            raise ValueError(f"--time-column applies to series (CSV/TSV), not {kind}")
        if self.impute is None:
            return
        if kind == "images":
            raise ValueError(f"--impute {self.impute}: images have no missing values to impute")
        if kind == "series" and self.impute != "linear":
            raise ValueError(
                f"--impute {self.impute}: series are imputed along time only: pass --impute linear (linear "
                "interpolation within each series, the ends filled with the nearest value); mean and median apply to "
                "vectors"
            )
        if kind == "vectors" and self.impute == "linear":
            raise ValueError(
                "--impute linear applies to series (interpolation along time); vectors take --impute mean or median "
                "(pass --kind series if the file holds one series)"
            )

    def to_card(self) -> dict:
        """The options as JSON for the card (paths as text, the command line as it was typed)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        return out
