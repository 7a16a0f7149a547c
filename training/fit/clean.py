"""Vectors made fit to learn from, or refused with the reason: non-finite values, missing values (imputed only when
asked), too few rows, constant columns (dropped only when asked); and the seeded train / validation / test split.

Statistics (imputed values, constant columns) come from the training rows only: the validation and test rows
judge the model and must not shape it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.data.errors import DataError
from training.fit.tables import Table

MIN_TRAIN_ROWS = 10
MIN_HELD_OUT_ROWS = 5  # each of validation and test


@dataclass(frozen=True)
class Splits:
    """Row indices of each part, each sorted (a memory-mapped file is then read in order)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


@dataclass
class Vectors:
    """The three parts as float32 [rows, columns] and what cleaning did."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    columns: list[str]
    dropped_constant: dict[str, float] = field(default_factory=dict)
    imputed: dict[str, dict] = field(default_factory=dict)


def split_sizes(rows: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    n_val = round(rows * fractions[1])
    n_test = round(rows * fractions[2])
    return rows - n_val - n_test, n_val, n_test


def minimum_rows(fractions: tuple[float, float, float], min_train: int = MIN_TRAIN_ROWS) -> int:
    """The fewest rows whose split leaves `min_train` training rows and `MIN_HELD_OUT_ROWS` in each held-out part."""
    rows = 1
    while True:
        n_train, n_val, n_test = split_sizes(rows, fractions)
        if n_train >= min_train and min(n_val, n_test) >= MIN_HELD_OUT_ROWS:
            return rows
        rows += 1


def split_text(fractions: tuple[float, float, float]) -> str:
    return "/".join(f"{100 * f:g}" for f in fractions)


def split_rows(
    rows: int, fractions: tuple[float, float, float], seed: int, what: str, unit: str = "rows", min_train: int = 0
) -> Splits:
    """A random split fixed by `seed`; DataError saying how many rows are needed when there are too few."""
    min_train = max(min_train, MIN_TRAIN_ROWS)
    n_train, n_val, n_test = split_sizes(rows, fractions)
    if n_train < min_train or min(n_val, n_test) < MIN_HELD_OUT_ROWS:
        need = minimum_rows(fractions, min_train)
        raise DataError(
            f"{what}: {rows} {unit}; at least {need} are needed (a {split_text(fractions)} train/validation/test "
            f"split with at least {min_train} for training and {MIN_HELD_OUT_ROWS} each for validation and test)"
        )
    order = np.random.default_rng(seed).permutation(rows)
    return Splits(
        np.sort(order[:n_train]), np.sort(order[n_train : n_train + n_val]), np.sort(order[n_train + n_val :])
    )


def check_finite(table: Table) -> None:
    """Refuse +-inf (a text file's `inf`, or a value beyond float32's range)."""
    bad = np.isinf(table.values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        count = int(bad.sum())
        raise DataError(
            f"{table.path}: {table.where(row, col)}: {table.values[row, col]} is not a finite number (infinite, or "
            "beyond float32's range of +-3.4e38)"
            + (f"; {count} such values" if count > 1 else "")
            + "; fix or remove those rows"
        )


def describe_missing(table: Table, per: str) -> tuple[int, str]:
    """The number of missing cells and, when there are some, a sentence naming the file, the first one's line and
    column, and the count `per` column (or channel)."""
    missing = np.isnan(table.values)
    count = int(missing.sum())
    if not count:
        return 0, ""
    per_column = missing.sum(axis=0)
    row, col = (int(i) for i in np.argwhere(missing)[0])
    columns = ", ".join(f"{table.columns[c]!r} ({int(per_column[c])})" for c in np.flatnonzero(per_column)[:10])
    return count, (
        f"{table.path}: {count} missing value(s) (empty, NA or NaN cells), first at {table.where(row, col)}; "
        f"per {per}: {columns}."
    )


def check_missing(table: Table, impute: str | None) -> int:
    """The number of missing cells; DataError when there are some and `impute` is not set."""
    count, where = describe_missing(table, "column")
    if count and impute is None:
        raise DataError(
            f"{where} Refusing to guess them: fill them in the file, or pass --impute mean|median "
            "(each column's mean or median over the training rows)"
        )
    return count


def _impute(parts: list[np.ndarray], train: np.ndarray, columns: list[str], rule: str, where: str) -> dict[str, dict]:
    missing = np.isnan(train).sum(axis=0)
    filled: dict[str, dict] = {}
    stat = np.nanmedian if rule == "median" else np.nanmean
    counts = sum(np.isnan(p).sum(axis=0) for p in parts)
    for c in np.flatnonzero(counts):
        if missing[c] == len(train):
            raise DataError(f"{where}: column {columns[c]!r} has no value in any training row: nothing to impute from")
        value = float(stat(train[:, c].astype(np.float64)))
        for part in parts:
            part[np.isnan(part[:, c]), c] = value
        filled[columns[c]] = {"missing": int(counts[c]), "value": value}
    return filled


STATS_BLOCK_ROWS = 1 << 15


def column_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and (population) std in float64, a block of rows at a time: numpy's `std(dtype=float64)`
    makes a float64 copy of the whole array (twice the float32 data), which the memory budget cannot afford."""
    n = len(x)
    total = np.zeros(x.shape[1])
    for start in range(0, n, STATS_BLOCK_ROWS):
        total += x[start : start + STATS_BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(x.shape[1])
    for start in range(0, n, STATS_BLOCK_ROWS):
        squares += ((x[start : start + STATS_BLOCK_ROWS] - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / n)


def constant_columns(train: np.ndarray) -> list[int]:
    """Columns with one value over the training rows (or a spread float32 cannot tell from rounding)."""
    lo, hi = train.min(axis=0), train.max(axis=0)
    mean, std = column_stats(train)
    return [int(c) for c in np.flatnonzero((lo == hi) | (std <= 1e-6 * np.abs(mean)))]


def prepare_vectors(
    table: Table,
    *,
    fractions: tuple[float, float, float],
    seed: int,
    impute: str | None,
    drop_constant: bool,
    warn: Callable[[str], None],
) -> Vectors:
    """Check, split, impute and drop as asked (see the module docstring)."""
    check_finite(table)
    n_missing = check_missing(table, impute)
    splits = split_rows(table.rows, fractions, seed, str(table.path))
    train, val, test = (table.values[idx] for idx in (splits.train, splits.val, splits.test))
    columns = list(table.columns)
    imputed = _impute([train, val, test], train, columns, impute, str(table.path)) if n_missing and impute else {}
    constant = constant_columns(train)
    dropped: dict[str, float] = {}
    if constant:
        shown = ", ".join(f"{columns[c]!r} ({float(train[0, c]):g})" for c in constant[:10])
        if not drop_constant:
            raise DataError(
                f"{table.path}: {len(constant)} constant column(s) over the {len(train)} training rows: {shown}. "
                "A constant column carries no information and cannot be standardised: leave it out with "
                "--ignore-columns, or pass --drop-constant"
            )
        if len(constant) == len(columns):
            raise DataError(f"{table.path}: every column is constant over the training rows: nothing to learn")
        warn(f"dropping {len(constant)} constant column(s): {shown} (--drop-constant); the model takes the others")
        dropped = {columns[c]: float(train[0, c]) for c in constant}
        keep = [c for c in range(len(columns)) if c not in set(constant)]
        train, val, test = (np.ascontiguousarray(p[:, keep]) for p in (train, val, test))
        columns = [columns[c] for c in keep]
    return Vectors(train, val, test, columns, dropped, imputed)
