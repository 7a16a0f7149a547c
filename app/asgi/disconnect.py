"""Stop a request whose client went away while it waits for (or runs) inference.

uvicorn does not cancel a route when its client disconnects: the request would keep its place in the model's
queue, run, and have its answer thrown away. This ASGI middleware watches the connection once the route has read
the whole body (from then on the only message the server can deliver is `http.disconnect`); when the client goes
before the response has started, the route's task is cancelled. `InferenceEngine.run` is cancellation-safe: the
request leaves its queue, or its result is dropped (and a batch whose callers have all gone is stopped). The
request is logged and counted with status 499 (nginx's "client closed request").

Only POST requests are watched (the inference routes); everything else passes straight through.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi.admission import client_gone_error, send_error

WATCH_AFTER_SECONDS = 0.05


class DisconnectMiddleware:
    """Cancel a POST route whose client disconnected after sending its body and before any response.

    To keep the hot path lean, the watch starts only when the route is still running `WATCH_AFTER_SECONDS`
    after its body was read (a fast request costs one timer); a client gone earlier is noticed then."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        route = asyncio.current_task()
        gone: asyncio.Future[Message] | None = None  # the message that ended the connection
        timer: asyncio.TimerHandle | None = None
        watcher: asyncio.Task[None] | None = None
        body_read = response_started = cancelled_by_us = False

        async def watch() -> None:
            nonlocal cancelled_by_us
            message = await receive()
            if gone is not None and not gone.done():
                gone.set_result(message)
            if message["type"] == "http.disconnect" and not response_started and route is not None:
                cancelled_by_us = True
                route.cancel()

        def start_watch() -> None:
            nonlocal watcher, gone
            if watcher is None:
                gone = loop.create_future()
                watcher = loop.create_task(watch())

        async def watched_receive() -> Message:
            nonlocal body_read, timer
            if body_read:  # the body is read: the next message is the disconnect
                start_watch()
                assert gone is not None
                return await asyncio.shield(gone)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
                timer = loop.call_later(WATCH_AFTER_SECONDS, start_watch)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            if not cancelled_by_us:
                raise  # a shutdown, not the client
            if route is not None and hasattr(route, "uncancel"):  # Python >= 3.11: our cancellation, consumed
                route.uncancel()
            # The client went away and the route was stopped: the answer goes nowhere (the server drops it) but
            # the request is logged and counted as 499, as a disconnect during the body is.
            await send_error(scope, receive, send, client_gone_error())
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
