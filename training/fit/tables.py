"""Vectors from one file: `.npy` (memory-mapped), `.npz` (a named or the only array), `.csv` / `.tsv` (optionally
`.gz`; header or not; read in blocks).

Every reader returns a `Table`: float32 [rows, columns] with NaN where a value is missing, the column names, and
how to name a row in a message (a text file's line number, an array's index). Readers refuse what cannot be a
number, naming the file, the line or row and the column; missing, non-finite and constant values are checked by
`training.fit.clean`.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from training.data.errors import DataError

# Cells read as "missing" (case-insensitive, surrounding spaces ignored).
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
BLOCK_ROWS = 1 << 16  # arrays: rows converted to float32 at a time
# Text: cells parsed at a time (~70 bytes each as Python strings: ~18 MB of transient text per block).
BLOCK_CELLS = 1 << 18
VECTOR_SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".csv.gz", ".tsv.gz")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Table:
    """Numeric columns of a file: `values` float32 [rows, columns], NaN = missing."""

    values: np.ndarray
    columns: list[str]
    path: Path
    format: str
    # Line number in the file of each row (text files); None: rows are named by their 0-based index.
    lines: np.ndarray | None = None
    # Each column's index in the file (None: 0, 1, 2...).
    source_columns: list[int] | None = None
    # The text of the `key` column of each row (`read_text(key=...)`), e.g. a series id.
    keys: list[str] | None = None
    # The text of the `time` column of each row (`read_text(time=...)`), e.g. a timestamp.
    times: list[str] | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def row_name(self, row: int) -> str:
        return f"line {int(self.lines[row])}" if self.lines is not None else f"row {row}"

    def where(self, row: int, column: int) -> str:
        """`line 7, column 'ash' (3)` or `row 6, column '3' (3)`: where a cell is, for messages."""
        index = self.source_columns[column] if self.source_columns is not None else column
        return f"{self.row_name(row)}, column {self.columns[column]!r} ({index})"


def suffix_of(path: Path) -> str:
    """`.csv`, `.csv.gz`, `.npy`... (lower case)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if len(suffixes) == 2 and suffixes[1] == ".gz":
        return "".join(suffixes)
    return suffixes[-1] if suffixes else ""


def column_index(names: Sequence[str], spec: str, option: str, path: Path) -> int:
    """The index of a column given by header name or 0-based index (a name wins when both could match)."""
    spec = spec.strip()
    if spec in names:
        return list(names).index(spec)
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if 0 <= i < len(names):
            return i
        raise DataError(f"{path}: {option} {spec}: the file has columns 0..{len(names) - 1}")
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    raise DataError(f"{path}: {option} {spec!r}: no such column (columns: {shown})")


def select_columns(
    names: Sequence[str],
    wanted: Sequence[str] | None,
    ignored: Sequence[str] | None,
    path: Path,
    exclude: Sequence[int] = (),
) -> list[int]:
    """Indices of the columns to keep: `wanted` (names or 0-based indices, in that order) or all, minus `ignored`
    and `exclude` (indices)."""
    keep = [column_index(names, s, "--columns", path) for s in wanted] if wanted else list(range(len(names)))
    if wanted and len(set(keep)) != len(keep):
        raise DataError(f"{path}: --columns names a column twice")
    drop = {column_index(names, s, "--ignore-columns", path) for s in ignored or ()} | set(exclude)
    keep = [i for i in keep if i not in drop]
    if not keep:
        raise DataError(f"{path}: no column left to learn from (check --columns / --ignore-columns)")
    return keep


def read_table(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    ignore_columns: Sequence[str] | None = None,
    array: str | None = None,
    header: str = "auto",
    delimiter: str | None = None,
    key: str | None = None,
    time: str | None = None,
) -> Table:
    """Read the vectors of `path` by its suffix (see the module docstring)."""
    suffix = suffix_of(path)
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if key is not None and suffix in (".npy", ".npz"):
        raise DataError(f"{path}: --id-column needs a CSV/TSV file (a column of ids)")
    if time is not None and suffix in (".npy", ".npz"):
        raise DataError(f"{path}: --time-column needs a CSV/TSV file (a column of times)")
    if suffix == ".npy":
        return _read_npy(path, columns, ignore_columns)
    if suffix == ".npz":
        return _read_npz(path, array, columns, ignore_columns)
    if suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        sep = delimiter if delimiter is not None else ("\t" if suffix.startswith(".tsv") else ",")
        return read_text(path, sep, header, columns, ignore_columns, key, time)
    raise DataError(f"{path}: vectors are read from {', '.join(VECTOR_SUFFIXES)} files, not {suffix or 'this file'}")


# -- arrays ------------------------------------------------------------------------------------------------------
def _check_array(path: Path, arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} holds {arr.dtype} values; vectors must be numbers (bool, int or float)")
    if arr.ndim != 2:
        raise DataError(
            f"{path}: {what} has shape {list(arr.shape)}; vectors are a 2-D array [rows, columns]"
            + (" (a single vector? reshape it to [1, n] or [n, 1])" if arr.ndim == 1 else "")
        )


def _to_float32(path: Path, arr: np.ndarray, keep: list[int]) -> np.ndarray:
    """`arr[:, keep]` as float32, converted a block of rows at a time (a memory-mapped file is never loaded whole
    beside its copy); values too large for float32 are refused here, where they are still visible."""
    out = np.empty((arr.shape[0], len(keep)), dtype=np.float32)
    whole = keep == list(range(arr.shape[1]))
    for start in range(0, arr.shape[0], BLOCK_ROWS):
        block = np.asarray(arr[start : start + BLOCK_ROWS])
        block = block if whole else block[:, keep]
        if block.dtype.kind == "f" and block.dtype.itemsize > 4:
            big = np.isfinite(block) & (np.abs(block) > _FLOAT32_MAX)
            if big.any():
                r, c = (int(i) for i in np.argwhere(big)[0])
                raise DataError(
                    f"{path}: row {start + r}, column {keep[c]}: {block[r, c]:g} does not fit in float32 "
                    "(rescale the column)"
                )
        out[start : start + len(block)] = block
    return out


def _read_npy(path: Path, columns: Sequence[str] | None, ignored: Sequence[str] | None) -> Table:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from exc
    _check_array(path, arr, "the array")
    names = [str(i) for i in range(arr.shape[1])]
    keep = select_columns(names, columns, ignored, path)
    return Table(_to_float32(path, arr, keep), [names[i] for i in keep], path, "npy", None, keep)


def _read_npz(path: Path, name: str | None, columns: Sequence[str] | None, ignored: Sequence[str] | None) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    with archive:
        names = list(archive.files)
        if name is None:
            if len(names) != 1:
                raise DataError(f"{path}: holds {len(names)} arrays ({', '.join(names)}); choose one with --array NAME")
            name = names[0]
        elif name not in names:
            raise DataError(f"{path}: no array {name!r} (arrays: {', '.join(names)})")
        try:
            arr = archive[name]
        except ValueError as exc:
            raise DataError(f"{path}: array {name!r} cannot be read without pickle ({exc})") from exc
    _check_array(path, arr, f"array {name!r}")
    col_names = [str(i) for i in range(arr.shape[1])]
    keep = select_columns(col_names, columns, ignored, path)
    return Table(_to_float32(path, arr, keep), [col_names[i] for i in keep], path, f"npz:{name}", None, keep)


# -- text --------------------------------------------------------------------------------------------------------
def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _open_text(path: Path) -> IO[str]:
    """The file as text (gzip-compressed when it ends in .gz); the caller's `with` closes it."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(reader: Iterator[list[str]], line_of: Callable[[], int]) -> Iterator[tuple[int, list[str]]]:
    for row in reader:
        if row and any(cell.strip() for cell in row):  # blank lines are not rows
            yield line_of(), row


def read_text(
    path: Path,
    delimiter: str,
    header: str,
    columns: Sequence[str] | None,
    ignored: Sequence[str] | None,
    key: str | None = None,
    time: str | None = None,
) -> Table:
    """A delimited text file, read in blocks of about `BLOCK_CELLS` cells. The first line is a header when `header`
    is "yes", or for "auto" when none of its cells is a number. `key` and `time`: columns kept as text
    (`Table.keys`, e.g. a series id; `Table.times`, e.g. a timestamp) and left out of the values."""
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            rows = _rows(reader, lambda: reader.line_num)
            first = next(rows, None)
            if first is None:
                raise DataError(f"{path}: no rows (an empty file)")
            first_line, first_row = first
            has_header = header == "yes" or (
                header == "auto" and not any(_is_number(c) for c in first_row if c.strip().lower() not in MISSING_TEXT)
            )
            width = len(first_row)
            names = [c.strip() or str(i) for i, c in enumerate(first_row)] if has_header else []
            names = names or [str(i) for i in range(width)]
            if has_header and len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise DataError(f"{path}: the header names {dupes} more than once")
            key_index = column_index(names, key, "--id-column", path) if key is not None else None
            time_index = column_index(names, time, "--time-column", path) if time is not None else None
            if key_index is not None and key_index == time_index:
                raise DataError(f"{path}: --id-column and --time-column name the same column {names[key_index]!r}")
            text_columns = tuple(i for i in (key_index, time_index) if i is not None)
            keep = select_columns(names, columns, ignored, path, text_columns)
            keys: list[str] | None = [] if key_index is not None else None
            times: list[str] | None = [] if time_index is not None else None
            block_rows = max(16, min(BLOCK_ROWS, BLOCK_CELLS // max(1, len(keep))))
            blocks: list[np.ndarray] = []
            lines: list[np.ndarray] = []
            cells: list[list[str]] = []
            numbers: list[int] = []

            def flush() -> None:
                blocks.append(_convert(path, cells, numbers, keep, names))
                lines.append(np.asarray(numbers, dtype=np.int64))
                cells.clear()
                numbers.clear()

            pending = [] if has_header else [first]
            for line, row in itertools.chain(pending, rows):
                if len(row) != width:
                    what = "the header" if has_header else f"line {first_line}"
                    raise DataError(f"{path}: line {line} has {len(row)} cells, {what} has {width}")
                cells.append([row[i] for i in keep])
                numbers.append(line)
                if keys is not None and key_index is not None:
                    keys.append(row[key_index].strip())
                if times is not None and time_index is not None:
                    times.append(row[time_index].strip())
                if len(cells) == block_rows:
                    flush()
            if cells:
                flush()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not blocks:
        raise DataError(f"{path}: a header and no rows")
    values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    blocks.clear()
    fmt = "tsv" if delimiter == "\t" else "csv" if delimiter == "," else f"text (delimiter {delimiter!r})"
    return Table(values, [names[i] for i in keep], path, fmt, np.concatenate(lines), keep, keys, times)


def _convert(path: Path, cells: list[list[str]], lines: list[int], keep: list[int], names: list[str]) -> np.ndarray:
    """One block of text cells as float32 (NaN = missing); the fast path converts the block at once, the slow
    one finds the cell that is not a number."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: refused by the finite check
            return np.array(cells, dtype=np.float32).reshape(len(cells), len(keep))
    except ValueError:
        pass
    out = np.empty((len(cells), len(keep)), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            try:
                out[r, c] = float(cell)
            except ValueError:
                if cell.strip().lower() in MISSING_TEXT:
                    out[r, c] = np.nan
                    continue
                hint = " (if that line is a header, pass --header yes)" if r == 0 and lines[0] == 1 else ""
                raise DataError(
                    f"{path}: line {lines[r]}, column {names[keep[c]]!r} ({keep[c]}): {cell.strip()[:40]!r} is not a "
                    f"number{hint}; choose numeric columns with --columns / --ignore-columns"
                ) from None
    return out
