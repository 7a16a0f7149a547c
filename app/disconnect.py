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
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.limits import CLIENT_CLOSED_REQUEST, send_error


class DisconnectMiddleware:
    """Cancel a POST route whose client disconnected after sending its body and before any response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[Message] = loop.create_future()  # the message that ended the connection
        watcher: asyncio.Task[None] | None = None
        response_started = False
        route: asyncio.Task[None] | None = None

        async def watch() -> None:
            message = await receive()
            if not gone.done():
                gone.set_result(message)
            if message["type"] == "http.disconnect" and not response_started and route is not None:
                route.cancel()

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # the body is read: the next message is the disconnect
                return await asyncio.shield(gone)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = loop.create_task(watch())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        async def call_route() -> None:
            await self.app(scope, watched_receive, watched_send)

        route = loop.create_task(call_route())
        try:
            await asyncio.shield(route)
        except asyncio.CancelledError:
            if not route.cancelled():  # we were cancelled (shutdown): take the route with us
                route.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await route
                raise
            # The client went away and the route was stopped: the answer goes nowhere (the server drops it) but
            # the request is logged and counted as 499, as a disconnect during the body is.
            await send_error(scope, receive, send, CLIENT_CLOSED_REQUEST, "client_disconnected", "client went away")
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
