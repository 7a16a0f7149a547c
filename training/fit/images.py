"""Images from a folder of PNG / JPEG files (any sizes, searched recursively), or from MNIST-style IDX files.

Every image becomes float32 pixels in [0, 1] at the working size, [N, C, S, S]: decoded with the service's own rules
(`app.core.images`: EXIF orientation applied, BT.601 gray, alpha over black for gray) and resized bilinearly
as the service resizes an upload, so a served model sees what it learnt from. Colour (C = 3) keeps RGB; a gray
file in a colour set becomes three equal channels.
"""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_UBYTE = 0x08
DEFAULT_SIZE = 28
LARGEST_NATIVE_DEFAULT = 64


@dataclass(frozen=True)
class ImageSet:
    """Pixels [N, C, S, S] in [0, 1], the file each came from and the sizes found before resizing."""

    x: np.ndarray
    names: list[str]
    native_sizes: Counter
    format: str


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _open_maybe_gz(path: Path) -> bytes:
    with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb") as fh:
        return fh.read()


def is_idx_images(path: Path) -> bool:
    """An IDX file of unsigned bytes with 3 dimensions (images), from its magic number."""
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] == IDX_UBYTE and head[3] == 3


def idx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and "idx3" in p.name and is_idx_images(p))


def default_size(native: Counter, arch: str) -> int:
    """The working side when --size is not given: the images' own side when they all share one square size of at
    most 64 pixels (rounded up to a multiple of 4 for the conv autoencoder), else 28."""
    side = DEFAULT_SIZE
    if len(native) == 1:
        ((h, w),) = native
        if h == w and h <= LARGEST_NATIVE_DEFAULT:
            side = h
    return side + (-side) % 4 if arch == "conv" else side


def _resize_channels(pixels: np.ndarray, size: int) -> np.ndarray:
    from app.core.images import resize

    return np.stack([resize(np.ascontiguousarray(c), size, size) for c in pixels])


def _decode(path: Path, channels: int) -> np.ndarray:
    """[C, H, W] float32 in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from app.core.images import to_colour, to_gray

    try:
        with Image.open(path) as image:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            if channels == 1:
                return to_gray(oriented)[None]
            pixels, _, _ = to_colour(oriented)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable PNG/JPEG image ({exc})") from exc
    if pixels.ndim == 2:
        return np.repeat(pixels[None], 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def read_image_folder(folder: Path, size: int | None, channels: int, arch: str) -> ImageSet:
    """Every PNG/JPEG under `folder`, decoded and resized to the working size (see the module docstring)."""
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG files in this folder or below")
    decoded = [_decode(f, channels) for f in files]
    native = Counter(d.shape[1:] for d in decoded)
    side = size if size is not None else default_size(native, arch)
    x = np.empty((len(files), channels, side, side), dtype=np.float32)
    for i, pixels in enumerate(decoded):
        x[i] = pixels if pixels.shape[1:] == (side, side) else _resize_channels(pixels, side)
    return ImageSet(x, [str(f.relative_to(folder)) for f in files], native, "png/jpeg folder")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of uint8 images [N, H, W] (any H, W), checking its header against its length."""
    data = _open_maybe_gz(path)
    if len(data) < 16 or not (data[:2] == b"\x00\x00" and data[2] == IDX_UBYTE and data[3] == 3):
        raise DataError(f"{path}: not an IDX file of images (unsigned bytes, 3 dimensions)")
    count, rows, cols = struct.unpack(">III", data[4:16])
    body = data[16:]
    if len(body) != count * rows * cols:
        raise DataError(
            f"{path}: the header says {count} images of {rows}x{cols} ({count * rows * cols} bytes), the file holds "
            f"{len(body)} bytes"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(count, rows, cols)


def read_idx_images(path: Path, size: int | None, channels: int, arch: str) -> ImageSet:
    """The images of one IDX file, or of every `*idx3*` image file in a folder (MNIST's train and t10k files are
    pooled; `fit` makes its own seeded split)."""
    files = idx_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no IDX image files (…-images-idx3-ubyte[.gz]) in this folder")
    arrays = [read_idx(f) for f in files]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{path}: the IDX files hold images of different sizes {sorted(shapes)}")
    pixels = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    native = Counter({pixels.shape[1:]: len(pixels)})
    side = size if size is not None else default_size(native, arch)
    unit = pixels.astype(np.float32) / 255.0
    if pixels.shape[1:] != (side, side):
        unit = np.stack([_resize_channels(img[None], side)[0] for img in unit])
    x = np.repeat(unit[:, None], channels, axis=1) if channels > 1 else unit[:, None]
    names = [f"{f.name}[{i}]" for f, a in zip(files, arrays, strict=True) for i in range(len(a))]
    return ImageSet(np.ascontiguousarray(x), names, native, "idx")
