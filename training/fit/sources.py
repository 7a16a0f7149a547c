"""Which kind of data a path holds, when `--kind` is not given.

- a folder of PNG/JPEG files, an IDX image file or a folder of them: images;
- a `.ts` file, a folder of CSV/TSV files (one series per file), or any data with `--id-column`, `--time-column`,
  `--forecast` or `--window`: series;
- a `.npy`, `.npz`, `.csv` or `.tsv` file: vectors.
"""

from __future__ import annotations

from training.data.errors import DataError
from training.fit.images import idx_files, image_files, is_idx_images
from training.fit.options import FitOptions, Kind
from training.fit.tables import VECTOR_SUFFIXES, suffix_of

SERIES_FILE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


def infer_kind(opts: FitOptions) -> Kind:
    """`opts.kind`, or the kind the data's path holds (see the module docstring)."""
    if opts.kind is not None:
        return opts.kind
    if any(o is not None for o in (opts.id_column, opts.time_column, opts.forecast, opts.window)):
        return "series"
    path = opts.data
    if path.is_dir():
        if image_files(path):
            return "images"
        if idx_files(path):
            return "images"
        if any(suffix_of(p) in SERIES_FILE_SUFFIXES or suffix_of(p) == ".ts" for p in path.iterdir()):
            return "series"
        raise DataError(
            f"{path}: a folder of neither PNG/JPEG images, IDX image files nor series files (.csv/.tsv, one series "
            "per file); pass --kind to say what it holds"
        )
    suffix = suffix_of(path)
    if suffix == ".ts":
        return "series"
    if suffix in VECTOR_SUFFIXES:
        return "vectors"
    if is_idx_images(path):
        return "images"
    raise DataError(
        f"{path}: cannot tell what it holds from its name; vectors are {', '.join(VECTOR_SUFFIXES)}, images a folder "
        "of PNG/JPEG files or IDX files, series .ts files, CSV files with --id-column or a folder of CSV files"
    )
