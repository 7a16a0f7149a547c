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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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


def plan_tiles(height: int, width: int, tile: int, radius: int, ramp: int = 8, align: int = 8) -> TilePlan:
    """Tiles of at most `tile` pixels a side (smaller sides: the whole side) overlapping by `2 * radius + ramp`,
    starting on multiples of `align`. `height` and `width` must be multiples of `align` (pad first: `pad_to`)."""
    if height % align or width % align or tile % align:
        raise ValueError(f"image {width}x{height} and tile {tile} must be multiples of {align}")
    overlap = 2 * radius + ramp
    step = tile - overlap
    step -= step % align
    if step <= 0:
        raise ValueError(f"tiles of {tile} px cannot overlap by {overlap} px (receptive radius {radius})")
    tile_h, tile_w = min(tile, height), min(tile, width)
    return TilePlan(
        height, width, tile_h, tile_w, radius, ramp, _starts(height, tile_h, step), _starts(width, tile_w, step)
    )


def pad_to(image: np.ndarray, align: int) -> np.ndarray:
    """[C, H, W] reflect-padded at the bottom and right to multiples of `align` (edge-padded when too small)."""
    _, height, width = image.shape
    pad_h, pad_w = -height % align, -width % align
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "edge"
    return np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


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


async def run_tiled(image: np.ndarray, run: Runner, plan: TilePlan, batch: int, compute: Compute = _here) -> np.ndarray:
    """The graph's output on `image` [C, H, W] (the plan's size), computed `batch` tiles at a time and blended
    (the blending through `compute`: milliseconds a tile, which the service keeps off the event loop)."""
    _, height, width = image.shape
    if (height, width) != (plan.height, plan.width):
        raise ValueError(f"the plan is for {plan.width}x{plan.height}, the image is {width}x{height}")
    out: np.ndarray | None = None
    weight = np.zeros((height, width), dtype=np.float32)
    origins = plan.origins()
    th, tw = plan.tile_h, plan.tile_w
    for first in range(0, len(origins), batch):
        chunk = origins[first : first + batch]
        tiles = np.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
        results = await run(np.ascontiguousarray(tiles, dtype=np.float32))
        if out is None:
            out = np.zeros((results.shape[1], height, width), dtype=np.float32)
        await compute(_accumulate, out, weight, plan, chunk, results)
    assert out is not None
    result: np.ndarray = await compute(_normalise, out, weight)
    return result


def _accumulate(
    out: np.ndarray, weight: np.ndarray, plan: TilePlan, origins: list[tuple[int, int]], results: np.ndarray
) -> None:
    th, tw = plan.tile_h, plan.tile_w
    for (y, x), result in zip(origins, results, strict=True):
        wy = _weights(th, y, plan.height, plan.radius, plan.ramp)
        w = np.outer(wy, _weights(tw, x, plan.width, plan.radius, plan.ramp)).astype(np.float32)
        out[:, y : y + th, x : x + tw] += result * w
        weight[y : y + th, x : x + tw] += w


def _normalise(out: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out /= np.maximum(weight, np.float32(1e-12))
    return out
