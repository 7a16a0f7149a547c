"""The contract between app/server/protocol.py and uvicorn: the protocol subclass overrides four of HttpToolsProtocol's
methods and reads its connection and cycle state. A uvicorn that renamed any of these would not fail at import:
it would silently stop enforcing the head limits or the drain. This test names every piece the subclass relies
on, checks it on a real connection, and checks that the installed uvicorn is inside the range pyproject.toml
pins (the range this contract was checked against)."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.server.protocol import BoundedHttpToolsProtocol
from tests.app.conftest import REPO

OVERRIDDEN = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_message_begin": [],
    "on_message_complete": [],
    "on_headers_complete": [],
    "send_400_response": ["msg"],
    "eof_received": [],
}
"""Methods of HttpToolsProtocol that BoundedHttpToolsProtocol overrides, with their parameters."""
PROTOCOL_STATE = ("cycle", "pipeline", "server_state", "transport", "loop", "app_state")
CYCLE_STATE = ("response_started", "response_complete", "keep_alive", "scope")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_uvicorn_is_the_pinned_one() -> None:
    found = re.search(r'"uvicorn\[standard\]>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert found, "pyproject.toml must pin uvicorn[standard] to a range >=X,<Y"
    low, high = _version(found.group(1)), _version(found.group(2))
    assert low <= _version(uvicorn.__version__) < high, (found.group(0), uvicorn.__version__)


def test_every_overridden_method_exists_with_the_same_parameters() -> None:
    for name, params in OVERRIDDEN.items():
        base = getattr(HttpToolsProtocol, name, None)
        assert callable(base), f"uvicorn's HttpToolsProtocol has no {name}() any more"
        assert list(inspect.signature(base).parameters)[1:] == params, (name, inspect.signature(base))
        assert name in vars(BoundedHttpToolsProtocol), f"{name} is no longer overridden: update OVERRIDDEN"


def test_the_state_the_subclass_reads_exists_on_a_real_connection() -> None:
    """A real connection (a socket pair) through the protocol: the attributes are there, a request makes a cycle
    with the state the subclass reads, and the server state lists the connection."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        config = Config(app=app, http=BoundedHttpToolsProtocol, lifespan="off", log_level="error")
        config.load()
        state = ServerState()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
        await loop.connect_accepted_socket(lambda: protocol, ours)
        for name in PROTOCOL_STATE:
            assert hasattr(protocol, name), f"HttpToolsProtocol has no attribute {name!r} any more"
        assert protocol in state.connections
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(100):
            if protocol.cycle is not None and protocol.cycle.response_complete:
                break
            await asyncio.sleep(0.01)
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle)
        for name in CYCLE_STATE:
            assert hasattr(cycle, name), f"RequestResponseCycle has no attribute {name!r} any more"
        assert cycle.response_complete and theirs.recv(100).startswith(b"HTTP/1.1 204")
        assert protocol.close_if_idle()  # between requests: closed
        theirs.close()
        await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_the_head_limits_come_from_the_apps_lifespan_state() -> None:
    """`create_app(settings)`'s lifespan publishes the head limits; the protocol takes them from there, not from
    the environment."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.server.protocol import HEAD_LIMITS_STATE, HeadLimits
    from app.settings import Settings
    from tests.app.conftest import MODELS_DIR

    settings = Settings(models_dir=MODELS_DIR, head_timeout_seconds=3.5, max_head_bytes=4096, log_level="warning")
    with TestClient(create_app(settings)) as client:
        state = client.app_state  # what uvicorn would hand each connection
    assert state[HEAD_LIMITS_STATE] == HeadLimits(3.5, 4096)

    async def protocol_limits() -> tuple[float, int]:
        config = Config(app=lambda *a: None, http=BoundedHttpToolsProtocol, lifespan="off", log_level="error")
        config.load()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state=dict(state))
        return protocol._head_timeout, protocol._max_head

    assert asyncio.run(protocol_limits()) == (3.5, 4096)
