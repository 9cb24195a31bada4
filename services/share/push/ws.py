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
import random
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import replace
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from services.kit import metrics
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
    origin = _origin(websocket.scope)
    if origin is not None and origin.rstrip("/") not in ctx.settings.ws_origins:
        log.warning("ws_origin_refused")
        await websocket.close(code=protocol.ORIGIN_REFUSED)  # before accept: the handshake is answered 403
        return
    offered = websocket.scope.get("subprotocols") or []
    connection = Connection(websocket, ctx, hub)
    metrics.WS_CONNECTIONS.inc()  # before the client can know it is open (and ask /metrics)
    try:
        await websocket.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
        # The handshake's headers are read: the connection lives all day, and its scope (held by the server's
        # protocol and by this WebSocket) need not keep them — about a kilobyte each of a thousand connections.
        websocket.scope["headers"] = ()
        await connection.serve([p[len(protocol.TOKEN_PREFIX):] for p in offered if p.startswith(protocol.TOKEN_PREFIX)])
    except Closing as closing:
        await connection.close(closing.code, closing.reason)
    except WebSocketDisconnect:
        pass
    finally:
        connection.stop()
        metrics.WS_CONNECTIONS.dec()


def _origin(scope: MutableMapping[str, Any]) -> str | None:
    """The Origin header, read from the scope's raw headers (Starlette's Headers would keep a parsed copy)."""
    for name, value in scope["headers"]:
        if name == b"origin":
            return str(value.decode("latin-1"))
    return None


class Connection:
    """One open app. What it costs matters (a region's tablets stay connected all day: the [push] issue allows
    40 KB each, the framework's own socket included): one coroutine receives; a sender task exists only while
    there is something to send; heartbeats and the token's expiry are kept by the hub's one clock (``tick``)."""

    __slots__ = ("_closer", "_next_ping", "_queue", "_sender", "acked", "ctx", "ended", "expires_at", "hub",
                 "last_heard", "live", "network_id", "principal", "replayed", "sent", "websocket")

    def __init__(self, websocket: WebSocket, ctx: ShareContext, hub: Hub) -> None:
        self.websocket, self.ctx, self.hub = websocket, ctx, hub
        self.principal: Principal | None = None
        self.network_id = ""
        self.expires_at = 0.0
        self.sent = 0  # the highest seq this connection has sent, or passed over while replaying the log
        self.acked = 0
        self.last_heard = time.monotonic()
        # The first ping comes at a random point of the second half of the period, and each next one a period
        # after it: connections opened together (every tablet reconnecting after a restart, or bench/push.py's
        # thousand) would otherwise be pinged in the same tick every period, and answer together — a burst of
        # frames that held every event delivery back for a hundred milliseconds.
        self._next_ping = self.last_heard + ctx.settings.ws_heartbeat_seconds * (0.5 + random.random() / 2)  # noqa: S311
        self.live = False
        self.replayed = False
        self.ended = False
        self._queue: deque[Event | None] | None = None  # events to send (None: a heartbeat ping), while any wait
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    # The hub's side ----------------------------------------------------------------------------------------------

    def offer(self, event: Event, seen: Facts) -> None:
        """A live event, decided on at once from the pass's facts: the decision of this moment, a few
        milliseconds after the commit, with no query of its own."""
        if not self.live or event.seq <= self.sent:
            return
        assert self.principal is not None
        if not self.ctx.gate.may_read(self.principal, event, seen.of(self.principal.subject)):
            return
        self._enqueue(event)

    def _enqueue(self, item: Event | None) -> None:
        if self._queue is None:
            self._queue = deque()
        elif item is not None and len(self._queue) >= self.ctx.settings.ws_queue_events:
            # Never drop silently: the client is closed, and resumes from its cursor.
            self.end(protocol.TOO_SLOW, "too far behind: reconnect and subscribe from your cursor")
            return
        self._queue.append(item)
        self._start_sender()

    def tick(self, monotonic: float, wall: float) -> None:
        """The hub's clock: the token's expiry (a renewal moves it), and heartbeats — a client silent for two
        periods is dropped."""
        if self.ended or self.principal is None:
            return
        if wall >= self.expires_at:
            self.end(protocol.TOKEN_EXPIRED, "the token expired: reconnect with a new one and your cursor")
        elif monotonic >= self._next_ping:
            period = self.ctx.settings.ws_heartbeat_seconds
            if monotonic - self.last_heard > 2 * period:
                self.end(protocol.HEARTBEAT_MISSED, "no frame from the client for two heartbeats")
                return
            self._next_ping = monotonic + period
            self._enqueue(None)

    def end(self, code: int, reason: str) -> None:
        """Closes from outside the receiving coroutine (which then sees the disconnect and returns)."""
        if self.ended:
            return
        self.stop()
        self._closer = asyncio.ensure_future(self.close(code, reason))

    def stop(self) -> None:
        """No more events: off the hub, the sender stopped."""
        self.ended, self.live = True, False
        self.hub.remove(self)
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        self._queue = None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "error", "code": code, "message": reason})
            await self.websocket.close(code=code, reason=reason[:120])

    # The conversation ----------------------------------------------------------------------------------------------

    async def serve(self, offered_tokens: list[str]) -> None:
        await self._open(offered_tokens[0] if offered_tokens else None)
        del offered_tokens
        while True:
            await self._answer(await self._receive())

    async def _open(self, offered_token: str | None) -> None:
        """Authentication and subscription: a coroutine of its own, so that the frames it read (the token's
        among them) are not kept for the connection's life."""
        if offered_token is not None:
            await self._authenticate(offered_token)
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
        self._start_sender()  # the replay first, then what was queued meanwhile

    async def _first_frame(self, expected: str) -> dict[str, Any]:
        """The next frame, which must be ``expected``, within the authentication time (pings are answered)."""
        code = protocol.UNAUTHENTICATED if expected == "auth" else protocol.PROTOCOL_ERROR
        try:
            async with asyncio.timeout(self.ctx.settings.ws_auth_seconds):
                while (frame := await self._receive())["type"] == "ping":
                    await self._send({"type": "pong"})
        except TimeoutError:
            raise Closing(code, f"no {expected} frame in time") from None
        if frame["type"] != expected:
            raise Closing(code, f"expected a {expected} frame")
        return frame

    async def _authenticate(self, token: object) -> None:
        if not isinstance(token, str) or not token:
            raise Closing(protocol.UNAUTHENTICATED, "a token is required")
        try:
            # Not remembered by the verifier: a connection verifies its token once (or at a renewal).
            principal = await self.ctx.verifier.authenticate(f"Bearer {token}", remember=False)
        except InvalidToken as error:
            log.warning("ws_authentication_failed")
            metrics.token_failed("ws", error.code)
            raise Closing(protocol.UNAUTHENTICATED, "the token is not valid") from None
        if self.principal is not None and (principal.subject, principal.network) != (
                self.principal.subject, self.principal.network):
            raise Closing(protocol.UNAUTHENTICATED, "a renewed token must name the same user")
        self.expires_at = float(principal.claims["exp"])
        # The decisions read the principal's fields, never its claims: a connection does not keep them.
        self.principal, self.network_id = replace(principal, claims=_NO_CLAIMS), principal.network

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

    async def _answer(self, frame: dict[str, Any]) -> None:
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

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.websocket.send_text(orjson.dumps(frame).decode())

    # Sending ---------------------------------------------------------------------------------------------------------

    def _start_sender(self) -> None:
        if self._sender is None and not self.ended:
            self._sender = asyncio.ensure_future(self._send_waiting())

    async def _send_waiting(self) -> None:
        """Runs while there is something to send: the replay of the log after the cursor (once), then the queue."""
        try:
            if not self.replayed:
                await self._replay()
                self.replayed = True
            while self._queue:
                event = self._queue.popleft()
                if not self._queue:
                    self._queue = None  # an idle connection keeps no queue
                if event is None:
                    await self._send(_PING)
                elif event.seq > self.sent:  # not a live event the replay sent already
                    await self.websocket.send_text(event.frame_text)
                    self.sent = event.seq
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the socket closed under it (the receiver sees that too), or the log is away
            if not isinstance(error, WebSocketDisconnect | OSError | RuntimeError):
                log.error("ws_send_failed", error=type(error).__name__)
            self._sender = None
            self.end(protocol.INTERNAL_ERROR, "the server could not send: reconnect with your cursor")
            return
        self._sender = None

    async def _replay(self) -> None:
        while True:  # catching up from the log, after the cursor
            read, visible = await self.ctx.run(lambda: self._replay_step(self.sent))
            for event in visible:
                await self.websocket.send_text(event.frame_text)
            if read:
                self.sent = max(self.sent, read[-1].seq)
            if len(read) < REPLAY_BATCH:
                return

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


_PING: dict[str, Any] = {"type": "ping"}
_NO_CLAIMS: dict[str, Any] = {}  # shared by every connection's principal: never written to
