"""The data plane, independent of HTTP and of the wire format: graphs run on arrays that `app.core.validation` has
fitted to them. What each task does with them is `app.core.tasks`. Any protocol (our `/v1` routes, the Open Inference
Protocol) sits on it.
"""

from __future__ import annotations

import numpy as np

from app.core.engine import GraphSession, InferenceEngine
from app.settings import Settings


class InferenceService:
    """Runs model graphs for the tasks of every protocol."""

    def __init__(self, engine: InferenceEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    # -- running graphs ---------------------------------------------------------------------------------------
    async def run_graph(self, graph: GraphSession, array: np.ndarray, task: str) -> dict[str, np.ndarray]:
        """Every output of `graph` on `array` (its one input), through the engine's queue and batcher."""
        return await self._engine.run(graph, {graph.inputs[0].name: array}, task)
