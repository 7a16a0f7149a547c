"""Missing values in series: refused by default, naming where the first one is; with `--impute linear`, filled by
linear interpolation along time within each series (the values before the first and after the last known one
take the nearest known value). A series whose channel has no value at all is refused: nothing to interpolate
from. Interpolation uses the series' own neighbouring values only, never statistics over other series."""

from __future__ import annotations

import numpy as np

from training.data.errors import DataError
from training.fit.clean import describe_missing
from training.fit.tables import Table

IMPUTE_HINT = (
    "pass --impute linear (linear interpolation along time within each series, the ends filled with the nearest value)"
)


def refuse_missing(table: Table) -> None:
    """DataError naming the file, the first missing cell's line and column and the count per channel."""
    count, where = describe_missing(table, "channel")
    if count:
        raise DataError(f"{where} Series are not imputed unless asked: fill them in the file, or {IMPUTE_HINT}")


def interpolate(x: np.ndarray, series: str, channels: list[str], where: str) -> np.ndarray:
    """How many values of each channel of `x` [T, C] were missing (NaN), filled in place (module docstring)."""
    missing = np.isnan(x)
    counts = missing.sum(axis=0)
    steps = np.arange(len(x))
    for c in np.flatnonzero(counts):
        known = ~missing[:, c]
        if not known.any():
            raise DataError(
                f"{where}: series {series!r}, channel {channels[c]!r}: every one of its {len(x)} values is missing: "
                "nothing to interpolate from; fill it or leave the series out"
            )
        x[~known, c] = np.interp(steps[~known], steps[known], x[known, c])
    return counts
