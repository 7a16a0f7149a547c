"""Image uploads -> grayscale float pixels in [0, 1], deterministically.

Policy (documented in the API):
- formats: PNG, JPEG, BMP, GIF, WebP only (Pillow is told to try no other decoder);
- the size is read from the header and checked against the limits before any pixel is decoded;
- EXIF orientation is applied and the oriented size is the image's size;
- animated images (GIF, WebP): the first frame;
- grayscale is ITU-R BT.601 luma, Y = (299 R + 587 G + 114 B) / 1000, computed exactly in float64 from the
  integer samples, then / 255 (so a gray pixel v becomes exactly v / 255, as MNIST's training data);
- alpha is composited over black (Y * A / 255), palette images use their palette (and transparency),
  16-bit images are divided by 65535, CMYK / YCbCr / other modes go through Pillow's RGB conversion first.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# v / 255 exactly as training computed it: (uint8 / 255.0) in float64, then float32.
_U8_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


@dataclass
class DecodedImage:
    """Pixels float32 in [0, 1] and how they were obtained: grayscale [H, W] (the default), or, decoded in colour
    (`colour=True`), RGB [H, W, 3] from a colour upload and [H, W] from a gray one, with its alpha, bit depth and
    ICC profile kept so that an answer can be encoded as the upload was."""

    pixels: np.ndarray
    format: str
    mode: str
    width: int
    height: int
    frames: int = 1
    exif_transposed: bool = False
    filename: str | None = None
    alpha: np.ndarray | None = None
    """Colour decoding: the alpha channel [H, W] in [0, 1], when the upload has one (else None)."""
    bits: int = 8
    """Colour decoding: 16 for a 16-bit gray upload (its answer is 16-bit too), else 8."""
    icc_profile: bytes | None = None
    """Colour decoding: the upload's ICC profile, attached to its answer unchanged."""

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3

    def report(self, steps: dict[str, Any]) -> ImageReport:
        """What was done to this upload: decoding (here) and the preprocessing `steps` (app.core.preprocess)."""
        details = {
            "filename": self.filename,
            "format": self.format,
            "mode": self.mode,
            "size": [self.width, self.height],
            "frames": self.frames,
            "frame_used": 0,
            "exif_transposed": self.exif_transposed,
            **steps,
        }
        resized = steps.get("resized")
        model_w, model_h = steps.get("model_size", (self.width, self.height))
        return ImageReport(
            size=(self.width, self.height),
            model_size=(int(model_w), int(model_h)),
            preprocess=str(steps.get("preprocess", "none")),
            inverted=bool(steps.get("inverted")),
            resized_from=(int(resized["from"][0]), int(resized["from"][1])) if resized else None,
            details=details,
            format=self.format,
            colour=self.is_colour,
            bits=self.bits,
            alpha=self.alpha,
            icc_profile=self.icc_profile,
        )


@dataclass(frozen=True)
class ImageReport:
    """How one upload was decoded and preprocessed: typed for the code that acts on it, and `details`, the same
    facts as the answer's `inputs[i]` (`ImageInputReport` in the schema) shows them."""

    size: tuple[int, int]
    """(width, height) after EXIF orientation."""
    model_size: tuple[int, int]
    """(width, height) the model saw."""
    preprocess: str
    inverted: bool
    resized_from: tuple[int, int] | None
    """(width, height) before a resize to the model's size; None when the image was not resized."""
    details: dict[str, Any]
    format: str = "PNG"
    colour: bool = False
    """The upload was decoded in colour and is a colour image (a gray upload to a colour model is False)."""
    bits: int = 8
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Integer BT.601 numerator (x 1000) from uint8 RGB samples, as int64."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return 299 * r + 587 * g + 114 * b


def to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> [H, W] float32 in [0, 1] (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "L":
        return _U8_TO_UNIT[np.asarray(image, dtype=np.uint8)]
    if mode == "1":
        return _U8_TO_UNIT[np.asarray(image.convert("L"), dtype=np.uint8)]
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (Pillow opens 16-bit PNGs as I;16 or I): full scale is 65535.
        values = np.asarray(image).astype(np.float64)
        return (np.clip(values, 0, 65535) / 65535.0).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if mode == "LA":
        la = np.asarray(image, dtype=np.uint8).astype(np.int64)
        return ((la[..., 0] * la[..., 1]) / (255.0 * 255.0)).astype(np.float32)
    if mode == "RGB":
        return (_luma(np.asarray(image, dtype=np.uint8)) / (1000.0 * 255.0)).astype(np.float32)
    if mode != "RGBA":
        # Palette (with its transparency), PA, La, RGBa, CMYK, YCbCr, LAB, HSV, RGBX...: let Pillow map the
        # samples to RGBA (or RGB when there is no alpha), then apply the same rules.
        has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        if image.mode == "RGB":
            return (_luma(np.asarray(image, dtype=np.uint8)) / (1000.0 * 255.0)).astype(np.float32)
    rgba = np.asarray(image, dtype=np.uint8)
    alpha = rgba[..., 3].astype(np.int64)
    return ((_luma(rgba) * alpha) / (1000.0 * 255.0 * 255.0)).astype(np.float32)


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")


def identical_channels(images: np.ndarray) -> bool:
    """Whether the 3 channels of `images` ([..., 3, H, W]: one image or a batch) are the same: a gray image given
    in colour, which a model's gray graph can take on one channel."""
    first = images[..., 0, :, :]
    return bool(np.array_equal(first, images[..., 1, :, :]) and np.array_equal(first, images[..., 2, :, :]))


def looks_like_allowed_image(data: bytes) -> bool:
    """The magic bytes of an accepted format (so a file that then fails to open is corrupt, not foreign)."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_side: int,
    filename: str | None = None,
    field_name: str = "file",
    colour: bool = False,
) -> DecodedImage:
    """Decode one uploaded image; 415 for a format outside the allow-list, 413 for too big, 400 for corrupt."""
    if not data:
        raise InvalidImage(f"{field_name}: the image is empty (0 bytes)", {"field": field_name})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        if looks_like_allowed_image(data):
            raise InvalidImage(f"{field_name}: the image data is truncated or corrupt", {"field": field_name}) from exc
        raise UnsupportedMediaType(
            f"{field_name}: not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})",
            {"field": field_name, "accepted": list(ALLOWED_FORMATS)},
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{field_name}: image too large ({exc})", {"field": field_name}) from exc
    except Exception as exc:
        raise InvalidImage(f"{field_name}: cannot read the image: {exc}", {"field": field_name}) from exc
    with image:
        width, height = image.size
        if width * height > max_pixels or max(width, height) > max_side:
            raise PayloadTooLarge(
                f"{field_name}: image is {width}x{height}; at most {max_pixels} pixels and {max_side} per side",
                {"field": field_name, "size": [width, height], "max_pixels": max_pixels, "max_side": max_side},
            )
        if width < 1 or height < 1:
            raise InvalidImage(f"{field_name}: image has no pixels ({width}x{height})", {"field": field_name})
        fmt = image.format or "unknown"
        try:
            # Counting frames reads the whole file (GIF, WebP): a truncated one fails here as well.
            frames = int(getattr(image, "n_frames", 1) or 1)
            image.seek(0)
            image.load()
            oriented = ImageOps.exif_transpose(image)
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, IndexError...
            raise InvalidImage(
                f"{field_name}: the image data is truncated or corrupt: {exc}", {"field": field_name}
            ) from exc
        transposed = _has_orientation(image)
        mode = image.mode
        alpha, bits, icc = None, 8, None
        if colour:
            pixels, alpha, bits = to_colour(oriented)
            icc = image.info.get("icc_profile") or None
        else:
            pixels = to_gray(oriented)
    return DecodedImage(
        pixels=pixels,
        format=fmt,
        mode=mode,
        width=pixels.shape[1],
        height=pixels.shape[0],
        frames=frames,
        exif_transposed=bool(transposed),
        filename=filename,
        alpha=alpha,
        bits=bits,
        icc_profile=icc,
    )


_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_colour(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Any Pillow image -> (pixels in [0, 1]: [H, W] for a gray image, [H, W, 3] RGB otherwise; its alpha [H, W]
    or None; its bit depth, 16 or 8). Unlike `to_gray`, alpha is kept apart, not composited: the answer gets it
    back. Pillow reads 16-bit colour PNGs as 8-bit RGB, so only gray images keep 16 bits."""
    mode = image.mode
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        return (np.clip(values, 0, 65535) / 65535.0).astype(np.float32), None, 16
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), None, 8
    if mode == "P" and not has_alpha:
        palette_mode = image.palette.mode if image.palette is not None else "RGB"
        image = image.convert("L" if palette_mode == "L" else "RGB")
        mode = image.mode
    if mode in _GRAY_MODES:
        gray = image.convert("LA") if has_alpha else image.convert("L")
        values = np.asarray(gray, dtype=np.uint8)
        if has_alpha:
            return _U8_TO_UNIT[values[..., 0]], _U8_TO_UNIT[values[..., 1]], 8
        return _U8_TO_UNIT[values], None, 8
    rgb = image.convert("RGBA" if has_alpha else "RGB")
    values = np.asarray(rgb, dtype=np.uint8)
    alpha = _U8_TO_UNIT[values[..., 3]] if has_alpha else None
    return _U8_TO_UNIT[values[..., :3]], alpha, 8


DECODE_BYTES_PER_PIXEL = 64
"""Peak memory of decoding one image to float pixels, per pixel (measured with tracemalloc on 1-megapixel
uploads: 5 B gray, 43 B RGB, 52 B RGBA, plus Pillow's own buffer): what a request reserves before decoding."""
PHOTO_BYTES_PER_PIXEL = 40
"""Memory a photograph to a tiled colour denoiser holds per pixel until its answer is sent: its float32 RGB pixels
(12 B), the denoised float32 copy (12 B), the 8-bit answer, Pillow's copy of it and the encoded file (~10 B),
and decoding's transient buffers; tiles, noise estimate and blending weights are bounded apart from the size.
Measured: see bench/photo_serving.py (peak RSS growth per pixel of a 12-megapixel colour upload)."""


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an upload's header, without decoding its pixels; None when it cannot be read (the
    decoder then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                width, height = image.size
    except Exception:
        return None
    return int(width), int(height)


def _has_orientation(image: Image.Image) -> bool:
    try:
        return int(image.getexif().get(0x0112, 1)) not in (0, 1)
    except Exception:
        return False


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking, as Pillow resamples) resize of [H, W] float32 pixels."""
    if pixels.shape == (height, width):
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))  # float32 -> mode F
    out = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
