"""WebSocket ``/ws``: every authorised team member's open app told at once of what changed (DESIGN.md §8).

A connection authenticates (the first frame, or the subprotocol ``bearer.<token>``: never the URL), subscribes from
its cursor, and is sent first every event after that cursor it may see now, in order, then live events. Each event
is checked by the access gate when it is delivered, not when it happened (the hub decides for every connection
from facts it reads once per pass, milliseconds after the commit): a member removed from the team, or a revoked
consent, stops the flow at once. Frames carry ids only. docs/push-protocol.md is the client's manual.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from services.kit.tokens import InvalidToken, Principal
from services.share.context import ShareContext
from services.share.events.hub import Facts, Hub
from services.share.events.log import Event, events_after
from services.share.push import protocol

log = structlog.get_logger(__name__)
router = APIRouter()

REPLAY_BATCH = 500  # events read per query while catching up


class Closing(Exception):
    """Ends the connection with a close code (protocol.py) and a reason the client is also sent."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    ctx: ShareContext = websocket.app.state.share
    hub: Hub = websocket.app.state.hub
    origin = websocket.headers.get("origin")
    if origin is not None and origin.rstrip("/") not in ctx.settings.ws_origins:
        log.warning("ws_origin_refused")
        await websocket.close(code=protocol.ORIGIN_REFUSED)  # before accept: the handshake is answered 403
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
    connection = Connection(websocket, ctx, hub)
    try:
        await connection.serve([p[len(protocol.TOKEN_PREFIX):] for p in offered if p.startswith(protocol.TOKEN_PREFIX)])
    except Closing as closing:
        with contextlib.suppress(Exception):
            await websocket.send_text(orjson.dumps({"type": "error", "code": closing.code,
                                                    "message": closing.reason}).decode())
            await websocket.close(code=closing.code, reason=closing.reason[:120])
    except WebSocketDisconnect:
        pass
    finally:
        hub.remove(connection)


class Connection:
    def __init__(self, websocket: WebSocket, ctx: ShareContext, hub: Hub) -> None:
        self.websocket, self.ctx, self.hub = websocket, ctx, hub
        self.settings = ctx.settings
        self.principal: Principal | None = None
        self.network_id = ""
        self.expires_at = 0.0
        self.sent = 0  # the highest seq this connection has sent, or passed over while replaying the log
        self.acked = 0
        self.last_heard = time.monotonic()
        self.live = False
        self.queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._too_slow: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # The hub's side ----------------------------------------------------------------------------------------------

    def offer(self, event: Event, seen: Facts) -> None:
        """A live event, decided on at once from the pass's facts: the decision of this moment, a few
        milliseconds after the commit, with no query of its own."""
        if not self.live or event.seq <= self.sent:
            return
        assert self.principal is not None
        if not self.ctx.gate.may_read(self.principal, event, seen.of(self.principal.subject)):
            return
        if len(self.queue) >= self.settings.ws_queue_events:
            if not self._too_slow.done():  # never drop silently: the client is closed, resumes from its cursor
                self._too_slow.set_result(None)
        else:
            self.queue.append(event)
            self._ready.set()

    # The conversation ----------------------------------------------------------------------------------------------

    async def serve(self, offered_tokens: list[str]) -> None:
        if offered_tokens:
            await self._authenticate(offered_tokens[0])
        else:
            frame = await self._first_frame("auth")
            await self._authenticate(frame.get("token"))
        await self._send({"type": "authenticated", "protocol": protocol.VERSION, "expires_at": int(self.expires_at)})
        subscribe = await self._first_frame("subscribe")
        since = subscribe.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise Closing(protocol.PROTOCOL_ERROR, "since must be a sequence number or null")
        await self.hub.started()
        self.sent = self.hub.position if since is None else since
        self.hub.add(self)
        self.live = True  # from here the hub queues live events; the log supplies everything before them
        await self._send({"type": "subscribed", "since": self.sent})
        # Two tasks per connection (and this coroutine keeping time): a thousand idle tablets cost memory per task.
        tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._deliver())]
        try:
            await self._keep_time(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _first_frame(self, expected: str) -> dict[str, Any]:
        """The next frame, which must be ``expected``, within the authentication time (pings are answered)."""
        deadline = time.monotonic() + self.settings.ws_auth_seconds
        while True:
            try:
                frame = await asyncio.wait_for(self._receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                code = protocol.UNAUTHENTICATED if expected == "auth" else protocol.PROTOCOL_ERROR
                raise Closing(code, f"no {expected} frame in time") from None
            if frame["type"] == "ping":
                await self._send({"type": "pong"})
                continue
            if frame["type"] != expected:
                code = protocol.UNAUTHENTICATED if expected == "auth" else protocol.PROTOCOL_ERROR
                raise Closing(code, f"expected a {expected} frame")
            return frame

    async def _authenticate(self, token: object) -> None:
        if not isinstance(token, str) or not token:
            raise Closing(protocol.UNAUTHENTICATED, "a token is required")
        try:
            principal = await self.ctx.verifier.authenticate(f"Bearer {token}")
        except InvalidToken:
            log.warning("ws_authentication_failed")
            raise Closing(protocol.UNAUTHENTICATED, "the token is not valid") from None
        if self.principal is not None and (principal.subject, principal.network) != (
                self.principal.subject, self.principal.network):
            raise Closing(protocol.UNAUTHENTICATED, "a renewed token must name the same user")
        self.principal, self.network_id = principal, principal.network
        self.expires_at = float(principal.claims["exp"])

    async def _receive(self) -> dict[str, Any]:
        text = await self.websocket.receive_text()
        self.last_heard = time.monotonic()
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise Closing(protocol.PROTOCOL_ERROR, "frames are JSON text") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise Closing(protocol.PROTOCOL_ERROR, "a frame is an object with a type")
        return frame

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.websocket.send_text(orjson.dumps(frame).decode())

    # Running parts: the first to end ends the connection --------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            frame = await self._receive()
            kind = frame["type"]
            if kind == "ack":
                seq = frame.get("seq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise Closing(protocol.PROTOCOL_ERROR, "ack needs a seq")
                self.acked = max(self.acked, min(seq, self.sent))
            elif kind == "ping":
                await self._send({"type": "pong"})
            elif kind == "pong":
                pass
            elif kind == "auth":  # a renewed token before the old one expires: the connection goes on
                await self._authenticate(frame.get("token"))
                await self._send({"type": "authenticated", "protocol": protocol.VERSION,
                                  "expires_at": int(self.expires_at)})
            else:
                raise Closing(protocol.PROTOCOL_ERROR, f"unknown frame type {kind[:40]!r}")

    async def _deliver(self) -> None:
        while True:  # catching up from the log, after the cursor
            read, visible = await self.ctx.run(lambda: self._replay_step(self.sent))
            for event in visible:
                await self._send(event.frame())
            if read:
                self.sent = max(self.sent, read[-1].seq)
            if len(read) < REPLAY_BATCH:
                break
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.queue:
                event = self.queue.popleft()
                if event.seq > self.sent:  # a live event the replay sent already
                    await self._send(event.frame())
                    self.sent = event.seq

    def _replay_step(self, cursor: int) -> tuple[list[Event], list[Event]]:
        """On a database thread: the next events of this network after ``cursor``, and those of them visible."""
        with self.ctx.db.reading() as db:
            read = events_after(db, cursor, REPLAY_BATCH, self.network_id)
        return read, self._gate(read) if read else []

    def _gate(self, events: list[Event]) -> list[Event]:
        """The events this principal may see now: the access decision of the moment, not of the write."""
        with self.ctx.db.reading() as db:
            decisions = self.ctx.gate.readable(db, self.principal, events)
        return [event for event, decision in zip(events, decisions, strict=True) if decision is not None]

    async def _keep_time(self, tasks: list[asyncio.Task[None]]) -> None:
        """Until a part ends the connection: heartbeats (a client silent for two periods is dropped), the
        token's expiry (a renewed token moves it), and a queue that overflowed while a send was stuck."""
        period = self.settings.ws_heartbeat_seconds
        next_ping = time.monotonic() + period
        while True:
            wait = max(0.0, min(next_ping - time.monotonic(), self.expires_at - time.time()))
            done, _ = await asyncio.wait([*tasks, self._too_slow], timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if self._too_slow.done():
                raise Closing(protocol.TOO_SLOW, "too far behind: reconnect and subscribe from your cursor")
            for task in done:
                task.result()  # raises the Closing (or disconnect) that ended the connection
            if time.time() >= self.expires_at:
                raise Closing(protocol.TOKEN_EXPIRED, "the token expired: reconnect with a new one and your cursor")
            if time.monotonic() >= next_ping:
                if time.monotonic() - self.last_heard > 2 * period:
                    raise Closing(protocol.HEARTBEAT_MISSED, "no frame from the client for two heartbeats")
                await self._send({"type": "ping"})
                next_ping += period
