"""Real multivariate time series shipped inside sktime (read from its files, sktime is never imported).

The `.ts` format: `#` comments, `@key value` headers, then after `@data` one series per line:
channels separated by `:`, values by `,`, the class label last.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import DataError


@dataclass(frozen=True)
class SeriesSet:
    """Series as float32 [N, T, C] (time-major per series, channels last) with string labels."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]


def sktime_data_path(relative: str) -> Path:
    """Locate a data file inside the installed sktime distribution without importing sktime."""
    try:
        dist = importlib.metadata.distribution("sktime")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataError(
            "sktime is not installed: it ships the BasicMotions series used for the LSTM models "
            "(pip install --no-deps sktime==1.2.0)"
        ) from exc
    path = Path(str(dist.locate_file(f"sktime/datasets/data/{relative}")))
    if not path.is_file():
        raise DataError(f"sktime {dist.version} does not contain datasets/data/{relative}")
    return path


def read_ts(path: Path) -> SeriesSet:
    """Parse an equal-length multivariate `.ts` file with class labels."""
    class_names: tuple[str, ...] = ()
    rows, labels = [], []
    in_data = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                key, _, value = line.partition(" ")
                if key.lower() == "@classlabel":
                    parts = value.split()
                    class_names = tuple(parts[1:]) if parts and parts[0] == "true" else ()
                elif key.lower() == "@data":
                    in_data = True
                continue
            *channels, label = line.split(":")
            try:
                rows.append([[float(v) for v in ch.split(",")] for ch in channels])
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from exc
            labels.append(label)
    if not rows:
        raise DataError(f"{path}: no series after @data")
    lengths = {len(ch) for r in rows for ch in r}
    if len(lengths) != 1 or len({len(r) for r in rows}) != 1:
        raise DataError(f"{path}: series differ in length or channel count")
    x = np.asarray(rows, dtype=np.float32).transpose(0, 2, 1)  # [N, C, T] -> [N, T, C]
    if not np.isfinite(x).all():
        raise DataError(f"{path}: non-finite values")
    return SeriesSet(np.ascontiguousarray(x), np.asarray(labels), class_names)


BASIC_MOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


def load_basic_motions() -> tuple[SeriesSet, SeriesSet, dict]:
    """BasicMotions: 40 + 40 series, 6 channels (3-D accelerometer, 3-D gyroscope) x 100 steps at 10 Hz,
    four activities (Standing, Running, Walking, Badminton). Returns (train, test, provenance)."""
    train = read_ts(sktime_data_path("BasicMotions/BasicMotions_TRAIN.ts"))
    test = read_ts(sktime_data_path("BasicMotions/BasicMotions_TEST.ts"))
    provenance = {
        "source": "BasicMotions (UEA multivariate archive), as shipped in sktime",
        "package": f"sktime=={importlib.metadata.version('sktime')}",
        "files": ["BasicMotions/BasicMotions_TRAIN.ts", "BasicMotions/BasicMotions_TEST.ts"],
        "channels": list(BASIC_MOTIONS_CHANNELS),
        "sampling": "10 Hz, 100 steps per series",
    }
    return train, test, provenance
