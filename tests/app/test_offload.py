"""The bounded pool for request work off the event loop (app/runtime/offload.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from app.runtime.offload import Offload
from app.settings import Settings, usable_cpus

from .conftest import make_client, png_bytes


def test_at_most_the_bound_runs_at_once() -> None:
    offload = Offload(2)
    lock = threading.Lock()
    running = peak = 0

    def work(seconds: float) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(seconds)
        with lock:
            running -= 1
        return threading.current_thread().name

    async def many() -> list[str]:
        return await asyncio.gather(*[offload.run(work, 0.05) for _ in range(8)])

    started = time.monotonic()
    names = asyncio.run(many())
    assert peak == 2 and len(names) == 8
    assert time.monotonic() - started >= 4 * 0.05  # 8 jobs, 2 at a time


def test_default_bound_follows_the_usable_cpus_and_workers() -> None:
    assert Offload.from_settings(Settings(offload_threads=3)).threads == 3
    assert Offload.from_settings(Settings()).threads == max(2, 2 * usable_cpus())
    assert Offload.from_settings(Settings(workers=64)).threads == 2


def test_image_uploads_are_decoded_in_the_bounded_pool() -> None:
    """Many concurrent uploads: the process does not grow a thread per request."""
    image = png_bytes((255 * np.eye(28)).astype(np.uint8))
    with make_client(offload_threads=2) as client:
        before = threading.active_count()
        results: list[int] = []

        def post() -> None:
            response = client.post("/v1/models/denoise/denoise", content=image, headers={"content-type": "image/png"})
            results.append(response.status_code)

        posters = [threading.Thread(target=post) for _ in range(16)]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join()
        assert results == [200] * 16
        # 16 posting threads are gone; the app added at most its 2 offload threads (plus ORT's own).
        assert threading.active_count() - before <= 2 + Settings().ort_concurrency()
