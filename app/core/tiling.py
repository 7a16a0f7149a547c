"""Large images through a fully convolutional graph in overlapping tiles, with bounded memory and the same result.

A convolutional network's output pixel depends only on the input pixels within its receptive radius `r`. A tile
computed on its own is therefore exact except within `r` pixels of a tile edge that is not an image edge (there
the network sees its zero padding instead of the neighbouring pixels). Tiles here overlap by `2 r` plus a blending
ramp; each tile's weight is zero within `r` of its interior edges and rises linearly over the ramp, so every
output pixel is a convex combination of exact values only: the tiled image equals the untiled one up to float
rounding (the tests hold it to 1e-3 on images small enough for both), without a visible seam.

Tiles start on multiples of `align` (pixel-unshuffle and pooling networks compute on a grid: a tile that starts
off the grid would not be exact) and all have the same size, so that they batch together through the engine.
The receptive radius is measured per graph when it loads (`app.core.registry.measure_receptive_radius`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Runner = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""Runs a batch of tiles [N, C, Th, Tw] through the graph and returns [N, C', Th, Tw]."""


@dataclass(frozen=True)
class TilePlan:
    """How an image of `height` x `width` is cut: tiles of `tile_h` x `tile_w` starting at every (y, x) of
    `ys` x `xs`."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    radius: int
    ramp: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]


def _starts(size: int, tile: int, step: int) -> tuple[int, ...]:
    if size <= tile:
        return (0,)
    last = size - tile  # the last tile ends at the image's edge (both are multiples of the grid)
    starts = list(range(0, last, step))
    if not starts or starts[-1] != last:
        starts.append(last)
    return tuple(starts)


def _step(tile: int, overlap: int, align: int) -> int:
    step = tile - overlap
    return step - step % align


def _balanced(size: int, tile: int, overlap: int, align: int) -> tuple[int, tuple[int, ...]]:
    """The side and starts of the fewest tiles of at most `tile` px that cover `size` with `overlap`, each made
    as small as that count allows: the work a tiled image repeats is the overlaps, not a last tile that mostly
    re-covers its neighbour (a 1024-px side in 512-px tiles: 3 tiles of 400 px, not 3 of 512)."""
    if size <= tile:
        return size, (0,)
    for count in range(2, size // align + 1):
        side = -(-(size + (count - 1) * overlap) // count)
        side += -side % align
        while side <= tile and (count - 1) * _step(side, overlap, align) + side < size:
            side += align  # the step rounds down to the grid: a little more per tile to reach the edge
        if side <= tile and _step(side, overlap, align) > 0:
            starts = _starts(size, side, _step(side, overlap, align))
            if len(starts) == count:
                return side, starts
    return tile, _starts(size, tile, _step(tile, overlap, align))  # not reached: `tile` itself is a solution


def plan_tiles(height: int, width: int, tile: int, radius: int, ramp: int = 8, align: int = 8) -> TilePlan:
    """The fewest tiles of at most `tile` pixels a side (smaller sides: the whole side), each as small as that
    count allows, overlapping by at least `2 * radius + ramp` and starting on multiples of `align`. `height`
    and `width` must be multiples of `align` (pad first: `pad_to`)."""
    if height % align or width % align or tile % align:
        raise ValueError(f"image {width}x{height} and tile {tile} must be multiples of {align}")
    overlap = 2 * radius + ramp
    if _step(tile, overlap, align) <= 0:
        raise ValueError(f"tiles of {tile} px cannot overlap by {overlap} px (receptive radius {radius})")
    tile_h, ys = _balanced(height, tile, overlap, align)
    tile_w, xs = _balanced(width, tile, overlap, align)
    return TilePlan(height, width, tile_h, tile_w, radius, ramp, ys, xs)


PadMode = Literal["reflect", "edge"]


def _pad_mode(height: int, width: int, pad_h: int, pad_w: int) -> PadMode:
    return "reflect" if pad_h < height and pad_w < width else "edge"


def pad_to(image: np.ndarray, align: int) -> np.ndarray:
    """[C, H, W] reflect-padded at the bottom and right to multiples of `align` (edge-padded when too small)."""
    _, height, width = image.shape
    pad_h, pad_w = -height % align, -width % align
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=_pad_mode(height, width, pad_h, pad_w))


def padded_tile(image: np.ndarray, y: int, x: int, tile_h: int, tile_w: int, align: int) -> np.ndarray:
    """The tile at (y, x) of `pad_to(image, align)`, without padding the whole image (a full-size copy): a tile
    that crosses the bottom or right edge is padded on its own. Equal to the padded image's tile because the
    reflection only reaches `align - 1` pixels back from the edge, which such a tile holds (tiles are at least
    twice the overlap, itself more than `align`), or the whole side when the image is narrower than a tile."""
    _, height, width = image.shape
    crop = image[:, y : y + tile_h, x : x + tile_w]
    pad_h, pad_w = tile_h - crop.shape[1], tile_w - crop.shape[2]
    if not pad_h and not pad_w:
        return crop
    mode = _pad_mode(height, width, -height % align, -width % align)
    return np.pad(crop, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


def _weights(length: int, start: int, size: int, radius: int, ramp: int) -> np.ndarray:
    """1-D weights of a tile along one axis: 0 within `radius` of an interior edge, then a linear ramp."""
    w = np.ones(length, dtype=np.float64)
    ramp_values = (np.arange(ramp, dtype=np.float64) + 1.0) / (ramp + 1.0)
    if start > 0:  # the tile's low edge is inside the image
        w[:radius] = 0.0
        w[radius : radius + ramp] = ramp_values
    if start + length < size:  # its high edge is inside the image
        w[length - radius :] = 0.0
        w[length - radius - ramp : length - radius] = np.minimum(
            w[length - radius - ramp : length - radius], ramp_values[::-1]
        )
    return w


Compute = Callable[..., Awaitable[Any]]
"""Runs `func(*args)` somewhere (the offload pool) and returns its result."""


async def _here(func: Callable[..., Any], *args: object) -> Any:
    return func(*args)


async def run_tiled(
    image: np.ndarray,
    run: Runner,
    plan: TilePlan,
    batch: int,
    compute: Compute = _here,
    align: int = 1,
    in_flight: int = 1,
) -> np.ndarray:
    """The graph's output on `image` [C, H, W], computed `batch` tiles at a time, `in_flight` batches at once (so
    that a lone large image keeps every ONNX Runtime call slot busy), and blended in order (the blending through
    `compute`: milliseconds a tile, which the service keeps off the event loop; the same order whatever finishes
    first, so the answer is deterministic). The plan is for the image padded to multiples of `align` (`pad_to`);
    tiles are padded one by one, and the answer is [C', H, W].

    The next batch starts as soon as one finishes, before the finished one is blended, so the engine never waits
    for the blending. Memory beside the answer: `in_flight` + 1 batches of tiles and two 1-D weight sums. The
    blending weight of a tile is the
    outer product of its row and column weights, and the tiles form a grid, so the total weight at (y, x) is
    (sum of the row weights at y) x (sum of the column weights at x): no full-size weight image."""
    _, height, width = image.shape
    if (-(-height // align) * align, -(-width // align) * align) != (plan.height, plan.width):
        raise ValueError(f"the plan is for {plan.width}x{plan.height}, the image is {width}x{height}")
    out: np.ndarray | None = None
    origins = plan.origins()
    th, tw = plan.tile_h, plan.tile_w
    chunks = [origins[first : first + batch] for first in range(0, len(origins), batch)]

    def start(chunk: list[tuple[int, int]]) -> asyncio.Task[np.ndarray]:
        tiles = np.stack([padded_tile(image, y, x, th, tw, align) for y, x in chunk])
        return asyncio.ensure_future(run(np.ascontiguousarray(tiles, dtype=np.float32)))

    pending: deque[asyncio.Task[np.ndarray]] = deque()
    started = 0

    def refill() -> None:
        nonlocal started
        while len(pending) < max(1, in_flight) and started < len(chunks):
            pending.append(start(chunks[started]))
            started += 1

    try:
        refill()
        for chunk in chunks:
            results = await pending.popleft()
            refill()
            if out is None:
                out = np.zeros((results.shape[1], height, width), dtype=np.float32)
            await compute(_accumulate, out, plan, chunk, results)
    finally:
        for task in pending:  # an error or a cancellation: the batches not yet blended are not left running
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    assert out is not None
    result: np.ndarray = await compute(_normalise, out, plan)
    return result


def _axis_weights(plan: TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """The summed blending weights along each axis of the padded image: [H], [W]."""
    rows = np.zeros(plan.height, dtype=np.float64)
    for y in plan.ys:
        rows[y : y + plan.tile_h] += _weights(plan.tile_h, y, plan.height, plan.radius, plan.ramp)
    cols = np.zeros(plan.width, dtype=np.float64)
    for x in plan.xs:
        cols[x : x + plan.tile_w] += _weights(plan.tile_w, x, plan.width, plan.radius, plan.ramp)
    return rows, cols


def _accumulate(out: np.ndarray, plan: TilePlan, origins: list[tuple[int, int]], results: np.ndarray) -> None:
    """Add each tile's result, weighted, to `out` (cropped where the tile reaches into the padding). The weight is
    1 but for bands at the tile's interior edges: those bands of `results` (the graph's output, ours to change)
    are scaled in place, rows then columns, instead of the whole tile by a full-size weight image."""
    th, tw = plan.tile_h, plan.tile_w
    _, height, width = out.shape
    for (y, x), result in zip(origins, results, strict=True):
        h, w = min(th, height - y), min(tw, width - x)
        tile = result[:, :h, :w]
        wy = _weights(th, y, plan.height, plan.radius, plan.ramp)[:h].astype(np.float32)
        wx = _weights(tw, x, plan.width, plan.radius, plan.ramp)[:w].astype(np.float32)
        for lo, hi in _runs(wy != 1.0):
            tile[:, lo:hi] *= wy[lo:hi, None]
        for lo, hi in _runs(wx != 1.0):
            tile[:, :, lo:hi] *= wx[lo:hi]
        out[:, y : y + h, x : x + w] += tile


def _normalise(out: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Divide by the total weight where it is not 1 (the overlaps: bands of rows and of columns), a band of rows at a
    time (no full-size temporary); where one tile alone covers a pixel its weight is 1 and nothing is done."""
    rows, cols = _axis_weights(plan)
    _, height, width = out.shape
    rows, cols = rows[:height], cols[:width]
    inv_cols = (1.0 / np.maximum(cols, 1e-12)).astype(np.float32)
    inv_rows = (1.0 / np.maximum(rows, 1e-12)).astype(np.float32)
    col_bands = _runs(cols != 1.0)
    band = max(1, (1 << 20) // max(width, 1))
    for lo, hi in _runs(rows != 1.0):  # rows in an overlap: every pixel
        for y in range(lo, hi, band):
            stop = min(y + band, hi)
            out[:, y:stop] *= inv_rows[y:stop, None] * inv_cols[None, :]
    for lo, hi in _runs(rows == 1.0):  # the other rows: only the columns in an overlap
        for c0, c1 in col_bands:
            out[:, lo:hi, c0:c1] *= inv_cols[c0:c1]
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [lo, hi) runs where the 1-D boolean `mask` is true."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
