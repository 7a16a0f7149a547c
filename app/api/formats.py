"""Bytes <-> arrays: JSON and `.npy` request bodies, value checks, `.npy`/`.npz`/PNG/JSON response bodies,
and content negotiation. Nothing here knows about models beyond a `TensorSpec`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson
from PIL import Image

from app.core.errors import InvalidInput, InvalidJSON, InvalidNpy, NonFiniteValue, NotAcceptable
from app.core.validation import Limits, index_text

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
MULTIPART = "multipart/form-data"
NPY_DTYPES = {np.dtype("<f4"), np.dtype(">f4")}
_NPY_MAX_HEADER = 10_000
_NON_FINITE_TOKENS = (b"NaN", b"Infinity", b"-Infinity", b"inf", b"-inf", b"nan")
_NUMBER_BYTES = b"0123456789.,[]-+eE \t\n\r"
_MAX_NESTING = 32  # numpy's most dimensions; every model takes far fewer (the explanations recurse this deep)


# -- request bodies -----------------------------------------------------------------------------------------
def media_type(content_type: str | None) -> str:
    """`image/PNG; charset=x` -> `image/png`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> Any:
    """orjson parse with a 400 that says where it broke (422 for NaN/Infinity, which JSON cannot hold)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        pos = int(getattr(exc, "pos", 0) or 0)
        details = {"position": pos, "line": getattr(exc, "lineno", None), "column": getattr(exc, "colno", None)}
        if "infinity" in str(exc) or body[pos : pos + 9].startswith(_NON_FINITE_TOKENS):
            raise NonFiniteValue(
                f"non-finite number at character {pos} of the body: values must be finite numbers "
                "(JSON has no NaN or Infinity)",
                details,
            ) from exc
        raise InvalidJSON(f"the body is not valid JSON: {exc}", details) from exc


def _walk(value: Any, index: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    """Every leaf of a nested list with its index (only used to explain a bad body; never on the fast path)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*index, i))
    else:
        yield index, value


def _reject_bad_leaf(field: str, data: list[Any]) -> None:
    """A 422 naming the first value that is not a number (raised here, so no frame keeps the exception)."""
    for index, leaf in _walk(data):
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            kind = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object"}.get(
                type(leaf), "not a number"
            )
            raise InvalidInput(
                f"{index_text(field, index)} is {kind}; every value must be a number",
                {"field": field, "index": list(index)},
            )


def _shape_of(value: Any) -> list[int]:
    """The shape a nested list implies, following first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _first_ragged(
    field: str, expected: list[int], value: Any, index: tuple[int, ...], depth: int
) -> InvalidInput | None:
    """The first place where `value` departs from `expected` (a module function, not a closure: a recursive
    closure is a reference cycle, left to the garbage collector with whatever it holds)."""
    if depth == len(expected):
        if isinstance(value, list):
            return InvalidInput(
                f"{index_text(field, index)} is a list where a number belongs (shape {expected} implied by {field}[0])",
                {"field": field, "index": list(index), "expected_shape": expected},
            )
        return None
    if not isinstance(value, list) or len(value) != expected[depth]:
        got = f"length {len(value)}" if isinstance(value, list) else "a number"
        return InvalidInput(
            f"{index_text(field, index)} has {got}, expected length {expected[depth]}: the array is ragged "
            f"(shape {expected} implied by the first element)",
            {"field": field, "index": list(index), "expected_shape": expected},
        )
    for i, item in enumerate(value):
        problem = _first_ragged(field, expected, item, (*index, i), depth + 1)
        if problem:
            return problem
    return None


def _describe_ragged(field: str, data: list[Any]) -> InvalidInput:
    return _first_ragged(field, _shape_of(data), data, (), 0) or InvalidInput(
        f"{field} is not a rectangular array of numbers", {"field": field}
    )


def json_tensor(body: bytes, limits: Limits, field: str = "inputs") -> np.ndarray:
    """The `{"inputs": [...]}` body as a float64 array, batch first; 4xx naming the field and index on error."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidInput(f'the body must be a JSON object like {{"{field}": [[...], ...]}}', {"field": ""})
    unknown = sorted(set(doc) - {field})
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {unknown}; the body holds only {field!r} (options go in the query string)",
            {"field": unknown[0]},
        )
    if field not in doc:
        raise InvalidInput(f"missing field {field!r}: a batch (list) of samples", {"field": field})
    data = doc[field]
    if not isinstance(data, list):
        raise InvalidInput(f"{field} must be a list (a batch of samples)", {"field": field})
    if not data:
        raise InvalidInput(f"{field} is an empty batch; send at least one sample", {"field": field})
    limits.check_rows(len(data), f"{field} holds", {"field": field})
    depth, probe = 0, data[0] if data else None
    while isinstance(probe, list) and depth < _MAX_NESTING:
        depth, probe = depth + 1, probe[0] if probe else None
    if depth >= _MAX_NESTING:  # the batch list itself plus `depth` lists below it
        raise InvalidInput(
            f"{field} is nested more than {_MAX_NESTING} lists deep; samples are vectors, images or series",
            {"field": field, "max_depth": _MAX_NESTING},
        )
    # Fast path: when nothing but numbers and brackets surround the one key, numpy can convert directly
    # (no string, boolean or null can be coerced silently). One pass over the bytes decides it.
    only_numbers = body.translate(None, _NUMBER_BYTES) == f'{{"{field}":}}'.encode()
    try:
        array = np.asarray(data, dtype=np.float64) if only_numbers else np.asarray(data)
    except (ValueError, TypeError):
        raise _describe_ragged(field, data) from None
    if not only_numbers:
        _reject_bad_leaf(field, data)
        if array.dtype.kind not in "fiu":
            raise _describe_ragged(field, data)
    if array.ndim < 2:
        raise InvalidInput(
            f"{field} must be a batch: a list of samples, each a list (got a flat list of {len(data)} numbers; "
            f"wrap it as [[...]] for one sample)",
            {"field": field},
        )
    return array.astype(np.float64, copy=False)


_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-z][0-9]{1,2})', 'fortran_order': (True|False), "
    rb"'shape': \(((?:[0-9]+, ?)*[0-9]*)\), \} *\n"
)


def npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int] | None:
    """Shape, Fortran order, dtype and data offset of a version 1.0 `.npy` body whose header is in the form numpy
    itself writes; None for anything else (numpy's reader then decides). numpy parses every header with
    `ast.literal_eval`, about a twentieth of a 64-row request's time on the event loop."""
    if len(body) < 10 or body[:8] != b"\x93NUMPY\x01\x00":
        return None
    end = 10 + int.from_bytes(body[8:10], "little")
    if end > len(body) or end > _NPY_MAX_HEADER + 10:
        return None
    match = _NPY_HEADER.fullmatch(body, 10, end)
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    shape = tuple(int(d) for d in dims.split(b",") if d.strip())
    return shape, fortran == b"True", np.dtype(descr.decode()), end


def _npy_header_numpy(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    buffer = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer, max_header_size=_NPY_MAX_HEADER)
        else:
            raise InvalidNpy(f".npy format version {version} is not supported (use 1.0 or 2.0)")
    except InvalidNpy:
        raise
    except Exception as exc:  # numpy raises ValueError / SyntaxError on a malformed header
        raise InvalidNpy(f"the body is not a valid .npy file: {exc}") from exc
    return shape, fortran, dtype, buffer.tell()


def npy_tensor(body: bytes, limits: Limits) -> np.ndarray:
    """A `.npy` body (float32, C order, never pickled) as an array; the header must match the byte count."""
    fast = npy_header(body)
    shape, fortran, dtype, offset = fast if fast is not None else _npy_header_numpy(body)
    if dtype not in NPY_DTYPES:
        raise InvalidInput(
            f".npy dtype {dtype.str} is not accepted; send float32 (e.g. array.astype(numpy.float32))",
            {"field": "body", "dtype": dtype.str},
        )
    if fortran:
        raise InvalidInput(".npy array is Fortran-ordered; send C order (numpy.ascontiguousarray)", {"field": "body"})
    if len(shape) < 2:
        raise InvalidInput(f".npy array has shape {list(shape)}; it must be a batch (samples first, rank >= 2)")
    if shape[0] == 0:
        raise InvalidInput(".npy array is an empty batch; send at least one sample", {"field": "body"})
    limits.check_rows(shape[0], ".npy array holds")
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidNpy(
            f".npy header says shape {list(shape)} ({count * dtype.itemsize} data bytes) but the body holds "
            f"{len(body) - offset} data bytes",
            {"shape": list(shape)},
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
    return array.astype(np.float32, copy=False) if dtype.byteorder in ("=", "<", "|") else array.astype(np.float32)


# -- response bodies ----------------------------------------------------------------------------------------
def to_json(payload: dict[str, Any]) -> bytes:
    """orjson with numpy arrays serialised natively (no per-float Python objects)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
"""Image answers by media type. An upload is answered in its own format (BMP and GIF as PNG) unless `Accept` asks
for another."""
JPEG_QUALITY = 95
WEBP_QUALITY = 95


def _quantise(pixels: np.ndarray, scale: float, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """round(clip(pixels, 0, 1) x scale) as `dtype`, a band of rows at a time: float temporaries of a few MiB
    instead of two full-size float64 copies of a 24-megapixel photograph. `pixels` may be any view."""
    out = np.empty(pixels.shape, dtype=dtype)
    band = max(1, (1 << 20) // max(1, pixels[0].size))
    for y in range(0, pixels.shape[0], band):
        rows = np.clip(pixels[y : y + band], 0.0, 1.0) * np.float32(scale)
        out[y : y + band] = np.rint(rows, out=rows)
    return out


def encode_image(
    pixels: np.ndarray,
    fmt: str,
    *,
    bits: int = 8,
    alpha: np.ndarray | None = None,
    icc_profile: bytes | None = None,
) -> bytes:
    """[H, W] (gray) or [H, W, 3] (RGB) pixels in [0, 1] as PNG, JPEG or WebP: 16-bit gray PNG when `bits` is 16,
    the alpha channel kept (PNG, WebP; JPEG has none), the ICC profile attached, JPEG at quality 95 without chroma
    subsampling, WebP at quality 95."""
    scale = 65535.0 if bits == 16 and fmt == "PNG" and pixels.ndim == 2 else 255.0
    if scale == 65535.0:
        image = Image.fromarray(_quantise(pixels, scale, np.uint16))  # I;16
    else:
        u8 = _quantise(pixels, scale, np.uint8)
        if alpha is not None and fmt != "JPEG":
            u8 = np.dstack([u8, _quantise(alpha, 255.0, np.uint8)])
        image = Image.fromarray(u8)
    options: dict[str, Any] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if fmt == "JPEG":
        options.update(quality=JPEG_QUALITY, subsampling=0)
    elif fmt == "WEBP":
        options.update(quality=WEBP_QUALITY)
    else:
        options.update(compress_level=3)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# -- content negotiation ------------------------------------------------------------------------------------
def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        quality = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((fields[0].lower(), quality))
    return ranges


def negotiate(accept: str | None, offered: Sequence[str], default: str) -> str:
    """The offered media type the Accept header prefers (`default` for none or `*/*`); 406 when none fits.

    Each candidate takes the quality of the most specific range that matches it (RFC 9110 12.5.1); ties go to
    the default, then to the order of `offered`.
    """
    if not accept or not accept.strip():
        return default
    ranges = _media_ranges(accept)
    best, best_q = None, 0.0
    for candidate in [default, *[o for o in offered if o != default]]:
        main = candidate.split("/")[0]
        quality, specificity = 0.0, -1
        for pattern, q in ranges:
            level = 2 if pattern == candidate else 1 if pattern == f"{main}/*" else 0 if pattern == "*/*" else -1
            if level >= 0 and (level > specificity or (level == specificity and q > quality)):
                quality, specificity = q, level
        if specificity >= 0 and quality > best_q:
            best, best_q = candidate, quality
    if best is None:
        raise NotAcceptable(
            f"cannot answer with {accept!r}; this endpoint answers with {', '.join(offered)}",
            {"accept": accept, "available": list(offered)},
        )
    return best
