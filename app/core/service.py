"""The data plane, independent of HTTP and of the wire format: graphs run on arrays that `app.core.validation` has
fitted to them. What each task does with them is `app.core.tasks`. Any protocol (our `/v1` routes, the Open Inference
Protocol) sits on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from app.core.engine import GraphSession, InferenceEngine
from app.core.tiling import plan_tiles, run_tiled
from app.runtime.offload import Offload
from app.settings import Settings

T = TypeVar("T")

RADIUS_MARGIN = 4
"""Pixels added to a graph's exact receptive radius when tiling with `tile_tolerance` 0 (a margin on that
measurement). A tile radius measured against a tolerance needs none: the measurement is the guarantee."""
TILE_ALIGN = 8
"""Tiles start on multiples of this (the 2x2 pixel-unshuffle and 2x pooling of our networks compute on a grid)."""
TILE_RAMP = 8
"""Pixels over which a tile's weight rises from 0 to 1 beyond its receptive margin (app/core/tiling.py)."""


class InferenceService:
    """Runs model graphs for the tasks of every protocol, large images in tiles."""

    def __init__(self, engine: InferenceEngine, settings: Settings, offload: Offload | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._offload = offload

    async def compute(self, func: Callable[..., T], *args: object) -> T:
        """`func(*args)` off the event loop (the offload pool) when there is one: per-image work such as the noise
        estimate or blending tiles takes milliseconds per megapixel, which every other request would wait for."""
        if self._offload is None:
            return func(*args)
        return await self._offload.run(func, *args)

    async def run_graph(
        self, graph: GraphSession, array: np.ndarray, task: str, extra: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Every output of `graph` on `array` (its first input) and `extra` (its other inputs, by name), through
        the engine's queue and batcher."""
        return await self._engine.run(graph, {graph.inputs[0].name: array, **(extra or {})}, task)

    def tile_side(self, graph: GraphSession) -> int:
        """The side of the tiles of `graph`: `AE_TILE_SIZE`, made at least twice the overlap its receptive radius
        needs (so that half of every tile is new pixels), on the 8-px grid; 0 when it does not tile."""
        tile = self._settings.tile_size
        if not tile or graph.tile_radius is None:
            return 0
        overlap = 2 * self._radius(graph) + TILE_RAMP
        least = -(-2 * overlap // TILE_ALIGN) * TILE_ALIGN
        return max(-(-tile // TILE_ALIGN) * TILE_ALIGN, least)

    def _radius(self, graph: GraphSession) -> int:
        """How far beyond a tile's interior edge its pixels are not used (`tile_radius`, plus the margin in exact
        mode)."""
        assert graph.tile_radius is not None
        return graph.tile_radius + (RADIUS_MARGIN if self._settings.tile_tolerance <= 0 else 0)

    def tiles(self, graph: GraphSession, height: int, width: int) -> bool:
        """Whether an image of this size runs in tiles: larger than one tile, on a graph whose receptive radius
        is known (`AE_TILE_SIZE`; 0 turns tiling off)."""
        tile = self.tile_side(graph)
        return bool(tile) and height * width > tile * tile

    async def run_tiled(
        self,
        graph: GraphSession,
        image: np.ndarray,
        task: str,
        output: str,
        extra: Callable[[int], Mapping[str, np.ndarray]],
    ) -> np.ndarray:
        """`output` of `graph` on one image [C, H, W] in overlapping tiles, `extra(n)` feeding the other inputs
        of a call of n tiles; each call has its own value limit (`max_request_values`), inference memory and
        deadline."""
        assert graph.tile_radius is not None
        _, height, width = image.shape
        tile = self.tile_side(graph)
        radius = self._radius(graph)
        padded_h, padded_w = (-(-side // TILE_ALIGN) * TILE_ALIGN for side in (height, width))
        plan = plan_tiles(padded_h, padded_w, tile, radius, TILE_RAMP, TILE_ALIGN)
        # One tile per call (tiles are large: a 512-px RGB tile is 768 Ki values, above the batcher's merge limit
        # anyway). A graph with a lone-call session runs one tile at a time, each on every CPU of the worker when
        # nothing else runs; without one, as many tiles as the engine runs calls at once (each on its intra-op
        # threads). Either way a lone photograph uses every CPU, and the CPUs never hold more threads than they
        # have (two tiles at once would start one on the lone session and the other beside it).
        in_flight = 1 if graph.lone_session is not None else self._engine.concurrency

        async def run(tiles: np.ndarray) -> np.ndarray:
            return (await self.run_graph(graph, tiles, task, extra(len(tiles))))[output]

        return await run_tiled(image, run, plan, 1, self.compute, TILE_ALIGN, in_flight)
