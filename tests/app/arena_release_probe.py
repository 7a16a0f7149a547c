"""Run by tests/app/test_memory.py in a fresh process (so its RSS is the probe's alone): a real registry with the
`photo` model, four concurrent 512x512 photographs through the engine (merged into one large call), then the
release run and one malloc_trim. Prints a JSON line of resident MiB at each stage.

    python -m tests.app.arena_release_probe MODELS_DIR [--no-release]   # MODELS_DIR: holding only `photo`
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from app.core.engine import InferenceEngine
from app.core.registry import ModelRegistry
from app.runtime.memory import load_malloc_trim, resident_bytes
from app.settings import Settings

MIB = 1024 * 1024


async def burst(engine: InferenceEngine, graph, images: np.ndarray) -> None:
    sigma = np.full(1, 25 / 255, np.float32)
    await asyncio.gather(*(engine.run(graph, {"x": images[i : i + 1], "sigma": sigma}, "probe") for i in range(4)))
    deadline = time.monotonic() + 10
    while engine.arena_releases == 0 and time.monotonic() < deadline and graph.release_feeds is not None:
        await asyncio.sleep(0.02)
    await engine.aclose()


def main(argv: list[str]) -> int:
    models = Path(argv[0])
    settings = Settings(models_dir=models, log_level="warning", inference_timeout_seconds=600)
    registry = ModelRegistry(settings, InferenceEngine(None, settings))
    registry.load_all()
    graph = registry.get("photo").graphs["full"]
    if "--no-release" in argv:
        graph = dataclasses.replace(graph, release_feeds=None)
    trim = load_malloc_trim()
    images = np.random.default_rng(0).random((4, 3, 512, 512), dtype=np.float32)
    trim(0)
    before = resident_bytes()
    engine = InferenceEngine(None, settings)
    asyncio.run(burst(engine, graph, images))
    trim(0)
    after = resident_bytes()
    print(json.dumps({"before_mib": before / MIB, "after_mib": after / MIB, "releases": engine.arena_releases}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
