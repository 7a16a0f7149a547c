"""The admission middleware and the memory budgets, driven directly as ASGI: in-flight cap, body reads (in all and
per client), the body's minimum rate, and the budgets' waits, refusals and releases. The live-server side of the
same rules is in test_takedown.py and test_hostile.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.asgi.admission import Admission, AdmissionMiddleware, _BodyClock
from app.core.budget import MemoryBudget, Reservation, request_reservation
from app.core.errors import Overloaded, PayloadTooLarge
from app.settings import Settings

Message = dict[str, Any]


class Gate:
    """A stand-in route: reads the whole body, then waits until released, then answers 200 with the body size."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.reservations: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        reservation = request_reservation(scope)
        self.reservations.append(reservation.held if reservation else -1)
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


class Client:
    """One request: its scope, a body delivered in pieces on demand, and what it was answered."""

    def __init__(self, path: str = "/v1/encode", body: bytes | None = None, peer: str = "10.0.0.1") -> None:
        headers = []
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": (peer, 1234)}
        self.body = body or b""
        self.pieces: asyncio.Queue[Message] = asyncio.Queue()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.answer = b""

    def send_body(self, more: bool = False, size: int | None = None) -> None:
        chunk = self.body if size is None else self.body[:size]
        self.pieces.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    async def receive(self) -> Message:
        return await self.pieces.get()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        else:
            self.answer += message.get("body", b"")


def middleware(app: Any, **settings: Any) -> tuple[AdmissionMiddleware, Admission, MemoryBudget]:
    config = Settings(**{"max_in_flight_requests": 2, "max_body_reads": 3, "max_body_reads_per_client": 2, **settings})
    admission = Admission(config.max_in_flight_requests, config.max_body_reads, config.max_body_reads_per_client, 7)
    budget = MemoryBudget("request memory", config.request_memory_budget_bytes, 0.2, 7)
    return AdmissionMiddleware(app, settings=config, admission=admission, request_memory=budget), admission, budget


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_requests_past_the_in_flight_cap_get_503_with_retry_after_in_their_protocols_shape() -> None:
    async def scenario() -> None:
        gate = Gate()
        mw, admission, _ = middleware(gate)
        running = [Client(body=b"{}") for _ in range(2)]
        tasks = [asyncio.create_task(mw(c.scope, c.receive, c.send)) for c in running]
        for client in running:
            client.send_body()
        await settle()
        assert admission.in_flight == 2 and admission.reads == 0
        for path in ("/v1/encode", "/v2/models/dense/infer"):
            late = Client(path=path, body=b"{}")
            late.send_body()
            await mw(late.scope, late.receive, late.send)
            assert late.status == 503 and late.headers["retry-after"] == "7"
            error = json.loads(late.answer)["error"]
            assert error["type"] == "overloaded" if path.startswith("/v1") else isinstance(error, str)
        probe = Client(path="/healthz")  # never counted, never refused
        probe.scope["method"] = "GET"
        probe.send_body()
        probe_task = asyncio.create_task(mw(probe.scope, probe.receive, probe.send))
        await settle()
        assert gate.entered == 3
        gate.release.set()
        await asyncio.gather(*tasks, probe_task)
        assert [c.status for c in running] == [200, 200]
        assert admission.in_flight == 0 and admission.reads == 0

    asyncio.run(scenario())


def test_bodies_being_read_hold_read_places_not_in_flight_slots() -> None:
    async def scenario() -> None:
        gate = Gate()
        mw, admission, budget = middleware(gate, max_in_flight_requests=1, max_body_reads=10)
        readers = [Client(body=b"x" * 100, peer=f"10.0.0.{i}") for i in range(5)]
        tasks = [asyncio.create_task(mw(c.scope, c.receive, c.send)) for c in readers]
        for client in readers:
            client.send_body(more=True, size=10)
        await settle()
        assert admission.reads == 5 and admission.in_flight == 0
        assert budget.held == 500  # each declared length reserved
        ready = Client(body=b"{}")
        ready.send_body()
        ready_task = asyncio.create_task(mw(ready.scope, ready.receive, ready.send))
        await settle()
        assert admission.in_flight == 1 and gate.entered == 1
        # A body completing while the slot is taken is refused at that moment.
        readers[0].send_body(more=False, size=0)
        await settle()
        assert readers[0].status == 503 and json.loads(readers[0].answer)["error"]["type"] == "overloaded"
        assert readers[0].headers["connection"] == "close"
        gate.release.set()
        await ready_task
        assert ready.status == 200
        for client in readers[1:]:
            client.pieces.put_nowait({"type": "http.disconnect"})
        await asyncio.gather(*tasks)
        assert admission.reads == 0 and admission.in_flight == 0 and budget.held == 0

    asyncio.run(scenario())


def test_body_reads_are_bounded_per_client_and_in_all() -> None:
    async def scenario() -> None:
        gate = Gate()
        mw, admission, _ = middleware(gate)  # 2 per client, 3 in all
        clients = [Client(body=b"x" * 10, peer=p) for p in ("10.0.0.1", "10.0.0.1", "10.0.0.1")]
        tasks = [asyncio.create_task(mw(c.scope, c.receive, c.send)) for c in clients]
        await settle()
        assert clients[2].status == 429 and clients[2].headers["retry-after"] == "7"
        assert json.loads(clients[2].answer)["error"]["type"] == "too_many_requests"
        other = Client(body=b"x" * 10, peer="10.0.0.2")
        other_task = asyncio.create_task(mw(other.scope, other.receive, other.send))
        await settle()
        assert other.status is None and admission.reads == 3
        fourth = Client(body=b"x" * 10, peer="10.0.0.3")
        await mw(fourth.scope, fourth.receive, fourth.send)
        assert fourth.status == 503 and json.loads(fourth.answer)["error"]["type"] == "overloaded"
        for client in (*clients[:2], other):
            client.pieces.put_nowait({"type": "http.disconnect"})
        await asyncio.gather(*tasks, other_task)
        assert admission.reads == 0 and admission.reads_by_client == {}

    asyncio.run(scenario())


def test_the_body_clock_allows_grace_plus_what_arrived_at_the_minimum_rate() -> None:
    async def scenario() -> None:
        clock = _BodyClock(total=10.0, grace=0.2, min_rate=1000.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        clock.received = 100  # worth 0.1 s more at 1,000 bytes/s
        never: asyncio.Future[Message] = loop.create_future()
        assert await clock.receive(lambda: never) is None
        assert 0.28 <= loop.time() - started < 1.0
        assert "too slowly" in clock.reason()
        total = _BodyClock(total=0.2, grace=5.0, min_rate=1.0)
        assert await total.receive(lambda: loop.create_future()) is None
        assert "within 0.2 s" in total.reason()

    asyncio.run(scenario())


def test_a_memory_budget_waits_in_order_refuses_what_never_fits_and_gives_back_on_cancel() -> None:
    async def scenario() -> None:
        budget = MemoryBudget("test", 100, 0.3, 4)
        with pytest.raises(PayloadTooLarge) as too_big:
            await budget.acquire(101, "a thing")
        assert too_big.value.details["budget_bytes"] == 100
        await budget.acquire(80, "first")
        order: list[str] = []

        async def take(name: str, nbytes: int) -> None:
            await budget.acquire(nbytes, name)
            order.append(name)

        big = asyncio.create_task(take("big", 50))
        await settle()
        small = asyncio.create_task(take("small", 10))  # would fit, but waits behind the first waiter
        await settle()
        assert order == []
        budget.release(80)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and budget.held == 60
        with pytest.raises(Overloaded) as overloaded:
            await budget.acquire(50, "late")  # no room within 0.3 s
        assert overloaded.value.headers["Retry-After"] == "4"
        cancelled = asyncio.create_task(budget.acquire(50, "cancelled"))
        await settle()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        budget.release(60)
        assert budget.held == 0 and not budget._waiters
        reservation = Reservation(budget)
        await reservation.grow(30, "part")
        await reservation.ensure(70, "more")
        assert reservation.held == 70 and budget.held == 70
        reservation.release()
        assert budget.held == 0

    asyncio.run(scenario())
