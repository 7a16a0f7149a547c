"""Series from files: sktime's `.ts` format, a folder of CSV/TSV files (one series per file: rows are time steps,
columns channels), one CSV/TSV file (one long series), or a long table whose `--id-column` names the series each
row belongs to (rows in file order within a series).

Every series is float32 [T, C], time-major, channels last; lengths may differ. Non-finite values are refused,
naming the file and the line; so are missing ones unless `--impute linear` fills them along time
(`training.fit.gaps`). With `--time-column`, the rows of each series are ordered by that column, which must step
regularly (`training.fit.times`); the step is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.data.errors import DataError
from training.fit.clean import check_finite
from training.fit.gaps import IMPUTE_HINT, interpolate, refuse_missing
from training.fit.tables import Table, read_table, suffix_of
from training.fit.times import Ordered, order_rows, parse_times, regular_step

SERIES_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


@dataclass(frozen=True)
class SeriesSet:
    """Series [T_i, C] float32, the channels' names, and where they came from."""

    series: list[np.ndarray]
    channels: list[str]
    format: str
    names: list[str]
    # `--impute linear`: how many missing values of each channel were interpolated (channels without any left out).
    imputed: dict[str, int] = field(default_factory=dict)
    # `--time-column`: the column, what it holds, the regular step in seconds, the first and last time.
    time: dict | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.series]

    @property
    def step_seconds(self) -> float | None:
        return self.time["step_seconds"] if self.time is not None else None


@dataclass(frozen=True)
class _Rows:
    """The rows of `table` (indices, in file order) that form the series `name`."""

    table: Table
    name: str
    rows: np.ndarray


def _add_counts(total: dict[str, int], channels: list[str], counts: np.ndarray) -> None:
    for c in np.flatnonzero(counts):
        total[channels[c]] = total.get(channels[c], 0) + int(counts[c])


def read_ts(path: Path, impute: bool = False) -> SeriesSet:
    """sktime's `.ts` format: `@` headers, then one series per line after `@data`, channels separated by `:`
    (values by `,`), the class or target label last when the header declares one. Lengths may differ between
    series (not between the channels of one series); `?` (missing) is refused unless `impute` (linear
    interpolation along time); timestamps are not supported."""
    labelled = False
    dimensions: int | None = None
    series: list[np.ndarray] = []
    in_data = False
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            key, _, value = line.partition(" ")
            key, value = key.lower(), value.strip().lower()
            if key in ("@classlabel", "@targetlabel"):
                labelled = value.split()[:1] == ["true"]
            elif key == "@dimensions":
                dimensions = int(value)
            elif key == "@timestamps" and value == "true":
                raise DataError(f"{path}:{lineno}: series with timestamps are not supported (@timeStamps true)")
            elif key == "@data":
                in_data = True
            continue
        fields = line.split(":")
        if labelled:
            fields = fields[:-1]
        if dimensions is not None and len(fields) != dimensions:
            raise DataError(f"{path}:{lineno}: {len(fields)} channels, the header says @dimensions {dimensions}")
        channels = []
        for c, text in enumerate(fields):
            cells = text.split(",")
            gaps = [v.strip() in ("?", "") or v.strip().lower() == "nan" for v in cells]
            if any(gaps) and not impute:
                raise DataError(
                    f"{path}:{lineno}: channel {c} has missing values ('?'): series are not imputed unless asked; "
                    f"fill them, leave the series out, or {IMPUTE_HINT}"
                )
            try:
                channels.append(
                    np.array([np.nan if gap else float(v) for v, gap in zip(cells, gaps, strict=True)], np.float64)
                )
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: channel {c}: {exc}") from exc
        if len({len(ch) for ch in channels}) != 1:
            raise DataError(f"{path}:{lineno}: the channels of this series differ in length")
        x = np.stack(channels, axis=1)
        if np.isinf(x).any() or np.nanmax(np.abs(x), initial=0.0) > np.finfo(np.float32).max:
            raise DataError(f"{path}:{lineno}: a value is not finite (or beyond float32's range)")
        if series and x.shape[1] != series[0].shape[1]:
            raise DataError(f"{path}:{lineno}: {x.shape[1]} channels, the first series has {series[0].shape[1]}")
        series.append(x.astype(np.float32))
    if not series:
        raise DataError(f"{path}: no series after @data")
    width = series[0].shape[1]
    channels_names = [f"dim_{i}" for i in range(width)]
    names = [f"{path.name}:{i}" for i in range(len(series))]
    imputed: dict[str, int] = {}
    if impute:
        for x, name in zip(series, names, strict=True):
            _add_counts(imputed, channels_names, interpolate(x, name, channels_names, str(path)))
    return SeriesSet(series, channels_names, "ts", names, imputed)


def _read_csv_table(
    path: Path, columns, ignore_columns, header: str, delimiter: str | None, impute: bool, key=None, time=None
) -> Table:
    table = read_table(
        path, columns=columns, ignore_columns=ignore_columns, header=header, delimiter=delimiter, key=key, time=time
    )
    check_finite(table)
    if not impute:
        refuse_missing(table)
    return table


def _by_id(table: Table, id_column: str | None) -> list[_Rows]:
    """The rows of each series of a table: all of them, or those sharing an id (series in order of first
    appearance, rows in file order)."""
    if id_column is None:
        return [_Rows(table, table.path.name, np.arange(table.rows))]
    assert table.keys is not None
    ids, first_row, inverse = np.unique(np.asarray(table.keys), return_index=True, return_inverse=True)
    order = np.argsort(first_row, kind="stable")
    return [_Rows(table, str(ids[i]), np.flatnonzero(inverse == i)) for i in order]


def _time_text(seconds: float, holds: str) -> str | float:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if holds == "timestamps" else seconds


def _assemble(
    pieces: list[_Rows], channels: list[str], time_column: str | None, impute: bool, where: Path
) -> tuple[list[np.ndarray], dict[str, int], dict | None]:
    """Each series' values in time order (with `time_column`), gaps interpolated (with `impute`); the counts of
    interpolated values; the card's time description."""
    parsed: dict[int, tuple[np.ndarray, str]] = {}
    series: list[np.ndarray] = []
    ordered: list[Ordered] = []
    imputed: dict[str, int] = {}
    lo, hi, holds = np.inf, -np.inf, ""
    for piece in pieces:
        x = piece.table.values[piece.rows]
        if time_column is not None:
            if id(piece.table) not in parsed:
                parsed[id(piece.table)] = parse_times(piece.table, time_column)
            seconds, holds = parsed[id(piece.table)]
            assert piece.table.lines is not None
            mine = seconds[piece.rows]
            done = order_rows(mine, piece.table.lines[piece.rows], piece.table.path, piece.name)
            x = x[done.order]
            ordered.append(done)
            lo, hi = min(lo, float(mine.min())), max(hi, float(mine.max()))
        if impute:
            _add_counts(imputed, channels, interpolate(x, piece.name, channels, str(piece.table.path)))
        series.append(np.ascontiguousarray(x))
    if time_column is None:
        return series, imputed, None
    step = regular_step(ordered, [p.name for p in pieces], where, time_column)
    time = {
        "column": time_column,
        "holds": holds,
        "step_seconds": step,
        "first": _time_text(lo, holds),
        "last": _time_text(hi, holds),
    }
    return series, imputed, time


def read_series(
    path: Path,
    *,
    id_column: str | None,
    columns: list[str] | None,
    ignore_columns: list[str] | None,
    header: str,
    delimiter: str | None,
    time_column: str | None = None,
    impute: bool = False,
) -> SeriesSet:
    """The series of `path` (see the module docstring)."""

    def ts(file: Path) -> SeriesSet:
        if id_column is not None or time_column is not None or columns or ignore_columns:
            raise ValueError(
                "--id-column, --time-column, --columns and --ignore-columns apply to CSV/TSV series, not .ts files"
            )
        return read_ts(file, impute)

    if path.is_file() and suffix_of(path) == ".ts":
        return ts(path)

    def read(file: Path, key: str | None = None) -> Table:
        return _read_csv_table(file, columns, ignore_columns, header, delimiter, impute, key=key, time=time_column)

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) in SERIES_SUFFIXES)
        if not files:
            ts_files = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) == ".ts")
            if len(ts_files) == 1:
                return ts(ts_files[0])
            raise DataError(f"{path}: no CSV/TSV files (one series per file) in this folder")
        tables = [read(f) for f in files]
        first = tables[0]
        for f, t in zip(files[1:], tables[1:], strict=True):
            if t.columns != first.columns:
                raise DataError(f"{f}: columns {t.columns} differ from {files[0].name}'s {first.columns}")
        pieces = [_Rows(t, f.name, np.arange(t.rows)) for f, t in zip(files, tables, strict=True)]
        series, imputed, time = _assemble(pieces, first.columns, time_column, impute, path)
        return SeriesSet(series, first.columns, "csv folder", [f.name for f in files], imputed, time)
    if suffix_of(path) not in SERIES_SUFFIXES:
        raise DataError(f"{path}: series are a .ts file, a CSV/TSV file or a folder of CSV/TSV files")
    table = read(path, id_column)
    pieces = _by_id(table, id_column)
    series, imputed, time = _assemble(pieces, table.columns, time_column, impute, path)
    fmt = table.format if id_column is None else f"{table.format} long table (--id-column {id_column})"
    return SeriesSet(series, table.columns, fmt, [p.name for p in pieces], imputed, time)
