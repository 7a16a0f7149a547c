"""Series from files: sktime's `.ts` format, a folder of CSV/TSV files (one series per file: rows are time steps,
columns channels), one CSV/TSV file (one long series), or a long table whose `--id-column` names the series each
row belongs to (rows in file order within a series).

Every series is float32 [T, C], time-major, channels last; lengths may differ. Missing and non-finite values are
refused (series are never imputed), naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import DataError
from training.fit.clean import check_finite, check_missing
from training.fit.tables import Table, read_table, suffix_of

SERIES_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


@dataclass(frozen=True)
class SeriesSet:
    """Series [T_i, C] float32, the channels' names, and where they came from."""

    series: list[np.ndarray]
    channels: list[str]
    format: str
    names: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.series]


def read_ts(path: Path) -> SeriesSet:
    """sktime's `.ts` format: `@` headers, then one series per line after `@data`, channels separated by `:`
    (values by `,`), the class or target label last when the header declares one. Lengths may differ between
    series (not between the channels of one series); `?` (missing) is refused; timestamps are not supported."""
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
            if any(v.strip() in ("?", "") or v.strip().lower() == "nan" for v in cells):
                raise DataError(
                    f"{path}:{lineno}: channel {c} has missing values ('?'): series are not imputed; fill them or "
                    "leave the series out"
                )
            try:
                channels.append(np.array([float(v) for v in cells], dtype=np.float64))
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: channel {c}: {exc}") from exc
        if len({len(ch) for ch in channels}) != 1:
            raise DataError(f"{path}:{lineno}: the channels of this series differ in length")
        x = np.stack(channels, axis=1)
        if not np.isfinite(x).all() or np.abs(x).max() > np.finfo(np.float32).max:
            raise DataError(f"{path}:{lineno}: a value is not finite (or beyond float32's range)")
        if series and x.shape[1] != series[0].shape[1]:
            raise DataError(f"{path}:{lineno}: {x.shape[1]} channels, the first series has {series[0].shape[1]}")
        series.append(x.astype(np.float32))
    if not series:
        raise DataError(f"{path}: no series after @data")
    width = series[0].shape[1]
    return SeriesSet(series, [f"dim_{i}" for i in range(width)], "ts", [f"{path.name}:{i}" for i in range(len(series))])


def _clean_table(table: Table) -> None:
    check_finite(table)
    check_missing(table, None)


def _read_csv_table(path: Path, columns, ignore_columns, header: str, delimiter: str | None, key=None) -> Table:
    table = read_table(
        path, columns=columns, ignore_columns=ignore_columns, header=header, delimiter=delimiter, key=key
    )
    _clean_table(table)
    return table


def read_series(
    path: Path,
    *,
    id_column: str | None,
    columns: list[str] | None,
    ignore_columns: list[str] | None,
    header: str,
    delimiter: str | None,
) -> SeriesSet:
    """The series of `path` (see the module docstring)."""
    if path.is_file() and suffix_of(path) == ".ts":
        if id_column is not None or columns or ignore_columns:
            raise ValueError("--id-column, --columns and --ignore-columns apply to CSV/TSV series, not .ts files")
        return read_ts(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) in SERIES_SUFFIXES)
        if not files:
            ts = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) == ".ts")
            if len(ts) == 1:
                return read_ts(ts[0])
            raise DataError(f"{path}: no CSV/TSV files (one series per file) in this folder")
        tables = [_read_csv_table(f, columns, ignore_columns, header, delimiter) for f in files]
        first = tables[0]
        for f, t in zip(files[1:], tables[1:], strict=True):
            if t.columns != first.columns:
                raise DataError(f"{f}: columns {t.columns} differ from {files[0].name}'s {first.columns}")
        return SeriesSet([t.values for t in tables], first.columns, "csv folder", [f.name for f in files])
    if suffix_of(path) not in SERIES_SUFFIXES:
        raise DataError(f"{path}: series are a .ts file, a CSV/TSV file or a folder of CSV/TSV files")
    table = _read_csv_table(path, columns, ignore_columns, header, delimiter, key=id_column)
    if id_column is None:
        return SeriesSet([table.values], table.columns, table.format, [path.name])
    assert table.keys is not None
    ids, first_row, inverse = np.unique(np.asarray(table.keys), return_index=True, return_inverse=True)
    order = np.argsort(first_row, kind="stable")  # series in order of first appearance
    series = [table.values[inverse == i] for i in order]
    return SeriesSet(series, table.columns, f"{table.format} long table (--id-column {id_column})", list(ids[order]))
