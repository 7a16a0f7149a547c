"""Tiles (app/core/tiling.py): the tiled result equals the untiled one, for a network of known receptive radius."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from app.core.tiling import pad_to, plan_tiles, run_tiled


def _conv_net(x: np.ndarray, layers: int = 3) -> np.ndarray:
    """[N, C, H, W] through `layers` 3x3 convolutions with zero padding and a ReLU between (radius = layers);
    channels mixed so that the output has 2 of them."""
    kernel = np.array([[0.05, 0.2, 0.05], [0.2, 0.4, 0.2], [0.05, 0.2, 0.05]])
    y = x.astype(np.float64)
    for layer in range(layers):
        padded = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, w = y.shape[2:]
        y = sum(kernel[i, j] * padded[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3))
        if layer < layers - 1:
            y = np.maximum(y - 0.3, 0.0)
    return np.concatenate([y.mean(axis=1, keepdims=True), y.max(axis=1, keepdims=True)], axis=1)


@pytest.mark.parametrize(("height", "width", "tile"), [(96, 136, 32), (64, 64, 64), (40, 200, 48), (16, 16, 32)])
def test_tiled_equals_untiled(height: int, width: int, tile: int) -> None:
    image = np.random.default_rng(height).random((3, height, width)).astype(np.float32)
    want = _conv_net(image[None])[0]
    calls = []

    async def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _conv_net(batch).astype(np.float32)

    plan = plan_tiles(height, width, tile, radius=3, ramp=4)
    got = asyncio.run(run_tiled(image, run, plan, batch=5))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sum(calls) == plan.count and max(calls) <= 5
    if height > tile or width > tile:
        assert plan.count > 1


@pytest.mark.parametrize("overlap_radius", [0, 3, 12, 33])
@pytest.mark.parametrize("tile", [64, 256, 512])
def test_tiles_are_the_fewest_and_as_small_as_that_count_allows(tile: int, overlap_radius: int) -> None:
    """Every side from 8 to 2,400 px: the tiles cover it, each overlaps the next by at least the plan's overlap,
    start on the 8-px grid, and their count is that of full-size tiles; a tile is only as large as that count
    needs (a 1024-px side in 512-px tiles with 74 px of overlap: 3 tiles of 400 px, 1.37x the pixels, not 3 of
    512, 2.25x)."""
    ramp = 8
    overlap = 2 * overlap_radius + ramp
    full_step = tile - overlap - (tile - overlap) % 8
    if full_step <= 0:
        with pytest.raises(ValueError, match="cannot overlap"):
            plan_tiles(tile * 2, tile * 2, tile, overlap_radius, ramp)
        return
    for size in range(8, 2408, 8):
        plan = plan_tiles(size, 8, tile, overlap_radius, ramp)
        side, starts = plan.tile_h, plan.ys
        assert side <= min(tile, size) and side % 8 == 0 and all(y % 8 == 0 for y in starts)
        assert starts[0] == 0 and starts[-1] + side == size and list(starts) == sorted(set(starts))
        assert all(b - a <= side - overlap for a, b in itertools.pairwise(starts)), (size, plan)
        fewest = 1 if size <= tile else 1 + -(-(size - tile) // full_step)
        assert len(starts) == fewest, (size, len(starts), fewest)
        if len(starts) > 1:  # one grid step less and the same count would not reach the edge with the overlap
            smaller = side - 8
            step = smaller - overlap - (smaller - overlap) % 8
            assert step <= 0 or (len(starts) - 1) * step + smaller < size, (size, plan)
    plan = plan_tiles(1024, 1024, 512, radius=33, ramp=8)
    assert (plan.tile_h, plan.tile_w, plan.count) == (400, 400, 9)


def test_the_next_tiles_start_before_the_finished_ones_are_blended() -> None:
    image = np.random.default_rng(1).random((1, 96, 96)).astype(np.float32)
    plan = plan_tiles(96, 96, 32, radius=3, ramp=4)
    running, most, blending, overlapped = 0, 0, 0, 0

    async def run(batch: np.ndarray) -> np.ndarray:
        nonlocal running, most, overlapped
        overlapped += blending > 0  # this tile runs while the previous one is blended
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        running -= 1
        return _conv_net(batch).astype(np.float32)

    async def blend(func, *args):  # type: ignore[no-untyped-def]
        nonlocal blending
        blending += 1
        await asyncio.sleep(0.003)
        blending -= 1
        return func(*args)

    got = asyncio.run(run_tiled(image, run, plan, batch=1, compute=blend, in_flight=1))
    np.testing.assert_allclose(got, _conv_net(image[None])[0], atol=1e-5)
    assert most == 1 and overlapped == plan.count - 1  # every tile but the first


def test_the_receptive_radius_matters() -> None:
    """With a radius below the network's, the seams show: the overlap is what makes tiles exact."""
    image = np.random.default_rng(0).random((1, 96, 96)).astype(np.float32)
    want = _conv_net(image[None])[0]

    async def run(batch: np.ndarray) -> np.ndarray:
        return _conv_net(batch).astype(np.float32)

    too_small = asyncio.run(run_tiled(image, run, plan_tiles(96, 96, 32, radius=0, ramp=0), 4))
    assert np.abs(too_small - want).max() > 1e-3


def test_padding_to_the_grid() -> None:
    image = np.arange(2 * 13 * 7, dtype=np.float32).reshape(2, 13, 7)
    padded = pad_to(image, 8)
    assert padded.shape == (2, 16, 8)
    np.testing.assert_array_equal(padded[:, :13, :7], image)
    assert pad_to(np.zeros((1, 16, 8), np.float32), 8).shape == (1, 16, 8)
    with pytest.raises(ValueError):
        plan_tiles(13, 16, 8, radius=1)


@pytest.mark.parametrize(("height", "width", "tile"), [(93, 131, 32), (13, 205, 48), (5, 3, 32), (70, 70, 40)])
def test_tiles_padded_one_by_one_equal_the_padded_image(height: int, width: int, tile: int) -> None:
    """The service never pads a whole image (a full-size copy): each tile is padded on its own, with the same
    values as a tile of the padded image, and the answer is the unpadded size."""
    from app.core.tiling import padded_tile

    image = np.random.default_rng(width).random((3, height, width)).astype(np.float32)
    padded = pad_to(image, 8)
    plan = plan_tiles(padded.shape[1], padded.shape[2], tile, radius=3, ramp=4)
    for y, x in plan.origins():
        np.testing.assert_array_equal(
            padded_tile(image, y, x, plan.tile_h, plan.tile_w, 8),
            padded[:, y : y + plan.tile_h, x : x + plan.tile_w],
        )

    async def run(batch: np.ndarray) -> np.ndarray:
        return _conv_net(batch).astype(np.float32)

    got = asyncio.run(run_tiled(image, run, plan, batch=3, align=8))
    want = asyncio.run(run_tiled(padded, run, plan, batch=3))[:, :height, :width]
    assert got.shape == (2, height, width)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, _conv_net(padded[None])[0][:, :height, :width], atol=1e-5)
