"""The floor: the least one Python process can do for a 1-row JSON encode while keeping what issue 19 keeps (a JSON
log line and metrics per request). A bare ASGI callable under the same uvicorn as the echo (httptools, uvloop, no
access log, one worker):

    MODEL_PATH=models/dense/encoder.onnx ORT_THREADS=1 \\
        python -m uvicorn bench.peers.floor:app --http httptools --loop uvloop --no-access-log --workers 1

Per POST: read the body, `orjson.loads`, `np.asarray(float32)`, a [0, 1] range check, ONNX Runtime called inline on
the event loop (no batching, no hand-off to a thread: one 1-row call is ~30 us), `{"latent": [[...]]}` written with
orjson, a prometheus_client counter and histogram, one JSON log line to stderr. No routing, no request id, no
limits, no error handling beyond a 400 for a body that is not a batch in [0, 1]: it is a measuring stick, not a
server. GET answers 200 (the readiness probe).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from prometheus_client import Counter, Histogram

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]
_state: dict[str, Any] = {}


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        return orjson.dumps({"ts": record.created, "level": "info", "message": record.msg, **fields}).decode()


def _start() -> None:
    """At start-up (the lifespan), not at import: the session, the metrics, the log handler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(os.environ["MODEL_PATH"], options, providers=["CPUExecutionProvider"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    log = logging.getLogger("floor.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    _state.update(
        session=session,
        input=session.get_inputs()[0].name,
        requests=Counter("floor_requests", "requests", ["route", "status"]).labels("/v1/encode", "200"),
        latency=Histogram("floor_request_seconds", "latency", ["route"]).labels("/v1/encode"),
        log=log,
        ids=itertools.count(),
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["method"] != "POST":
        await _answer(send, 200, b'{"ok":true}')
        return
    try:
        x = np.asarray(orjson.loads(b"".join(chunks))["inputs"], dtype=np.float32)
        if x.ndim != 2 or not (x.min() >= 0.0 and x.max() <= 1.0):
            raise ValueError("not a batch of values in [0, 1]")
    except (ValueError, KeyError, TypeError) as exc:
        await _answer(send, 400, orjson.dumps({"error": str(exc)}))
        return
    latent = _state["session"].run(None, {_state["input"]: x})[0]
    await _answer(send, 200, orjson.dumps({"latent": latent}, option=orjson.OPT_SERIALIZE_NUMPY))
    seconds = time.perf_counter() - started
    _state["requests"].inc()
    _state["latency"].observe(seconds)
    log = _state["log"]
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None)
    record.fields = {
        "request_id": f"{next(_state['ids']):016x}",
        "method": "POST",
        "path": scope["path"],
        "status": 200,
        "latency_ms": round(seconds * 1000, 3),
    }
    log.handle(record)
