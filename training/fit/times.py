"""`--time-column` for CSV/TSV series: each row's time (numbers, read as seconds, e.g. Unix time; or ISO 8601
dates and times, those without a UTC offset read as UTC), which orders the rows of a series, and the one regular
step between rows every series must share (irregular steps are refused, giving the step sizes found)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.data.errors import DataError
from training.fit.tables import MISSING_TEXT, Table

YEAR_MONTH = re.compile(r"^(\d{4})-(\d{2})$")  # 1949-01: ISO 8601 but not `datetime.fromisoformat`'s
STEP_DECIMALS = 6  # steps are compared to the microsecond (float sums of 0.1 s steps stay regular)
SHOWN_STEPS = 6
UNITS = (("days", 86400.0), ("h", 3600.0), ("min", 60.0))


@dataclass(frozen=True)
class Ordered:
    """One series' rows in time order: `order` indexes the rows as read, `steps` the seconds between them."""

    order: np.ndarray
    steps: np.ndarray
    lines: np.ndarray


def duration_text(seconds: float) -> str:
    """1800 -> '30 min', 86400 -> '1 days', 0.25 -> '0.25 s'."""
    for unit, size in UNITS:
        if abs(seconds) >= size and float(seconds / size).is_integer():
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _timestamp(text: str) -> datetime | None:
    match = YEAR_MONTH.match(text)
    if match:
        return datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_times(table: Table, column: str) -> tuple[np.ndarray, str]:
    """Every row's time in seconds (float64) and what the column holds ("numbers" or "timestamps")."""
    assert table.times is not None
    texts = table.times
    try:
        seconds = np.array(texts, dtype=np.float64)
    except ValueError:
        seconds = None
    if seconds is not None and np.isfinite(seconds).all():
        return seconds, "numbers"
    out = np.empty(len(texts), dtype=np.float64)
    for row, text in enumerate(texts):
        if text.lower() in MISSING_TEXT:
            raise DataError(
                f"{table.path}: {table.row_name(row)}, --time-column {column!r}: the time is missing; every row needs "
                "its time"
            )
        moment = _timestamp(text)
        if moment is None:
            raise DataError(
                f"{table.path}: {table.row_name(row)}, --time-column {column!r}: {text[:40]!r} is neither a number "
                "(seconds) nor an ISO 8601 date or time (e.g. 2024-03-01, 2024-03-01 12:30:00, "
                "2024-03-01T12:30:00+01:00)"
            )
        out[row] = moment.timestamp()
    return out, "timestamps"


def order_rows(seconds: np.ndarray, lines: np.ndarray, path: Path, series: str) -> Ordered:
    """The rows of one series sorted by time (stable); two rows at the same time are refused."""
    order = np.argsort(seconds, kind="stable")
    steps = np.diff(seconds[order])
    same = np.flatnonzero(steps == 0)
    if same.size:
        a, b = (int(lines[order[i]]) for i in (same[0], same[0] + 1))
        raise DataError(
            f"{path}: series {series!r}: lines {a} and {b} have the same time; each step needs its own time (remove "
            "duplicated rows, or give each series its own --id-column value)"
        )
    return Ordered(order, np.round(steps, STEP_DECIMALS), lines[order])


def regular_step(ordered: list[Ordered], names: list[str], path: Path, column: str) -> float | None:
    """The one step (seconds) between consecutive rows of every series; DataError giving the step sizes found when
    they differ. None when no series has two rows."""
    counts = Counter(float(s) for o in ordered for s in o.steps)
    if len(counts) <= 1:
        return next(iter(counts), None)
    usual = counts.most_common(1)[0][0]
    shown = ", ".join(f"{duration_text(s)} (x {n})" for s, n in counts.most_common(SHOWN_STEPS))
    more = f" and {len(counts) - SHOWN_STEPS} more" if len(counts) > SHOWN_STEPS else ""
    where = next((o, name) for o, name in zip(ordered, names, strict=True) if (o.steps != usual).any())
    first = int(np.flatnonzero(where[0].steps != usual)[0])
    raise DataError(
        f"{path}: --time-column {column!r}: the steps between rows are irregular: {len(counts)} distinct step sizes "
        f"{shown}{more}; the first step other than {duration_text(usual)} ends at line {int(where[0].lines[first + 1])}"
        f" (series {where[1]!r}). Series need one regular step (a missing row shows as a longer step): resample "
        "them first, or leave out --time-column to take the rows in file order"
    )
