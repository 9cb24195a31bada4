"""Waking this process's event hub when a request may have written: after its answer, so after its commit."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class WakeOnWrite:
    """A plain ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware): a request that
    might have written — any method but a read, answered below 400 — wakes the hub once its answer has started,
    which the share service sends only after its transaction committed. A wake-up that finds nothing costs one
    short query; a missed one costs one poll interval (hub.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing reads and WebSockets on: those keep no frame of this layer.
        if scope["type"] != "http" or scope["method"] in _READS:
            return self.app(scope, receive, send)
        return self._watched(scope, receive, send)

    async def _watched(self, scope: Scope, receive: Receive, send: Send) -> None:
        wrote = False

        async def watch(message: Message) -> None:
            nonlocal wrote
            if message["type"] == "http.response.start":
                wrote = message["status"] < 400
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            hub = getattr(scope["app"].state, "hub", None) if "app" in scope else None
            if wrote and hub is not None:
                hub.wake()
