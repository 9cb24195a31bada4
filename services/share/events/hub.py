"""This process's reader of the event log, handing each new event to the WebSocket connections of its network.

One pass: number what was committed (sequencer.py), read what was numbered since the last pass, and offer each
event to the subscribers of its network, in order. A pass runs when woken — right after this process commits a
write (``wake``: the application's middleware), or when another instance says it numbered events (Redis
pub/sub, ``settings.redis_url``) — and at the latest every ``settings.event_poll_seconds``. The wake-up is only a
hint: it carries no event, is sent after the commit (never inside the write's transaction), and a missed one costs
at most one poll interval, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from services.share.events.log import Event, events_after, head
from services.share.events.sequencer import sequence_pending

if TYPE_CHECKING:
    from services.share.context import ShareContext

log = structlog.get_logger(__name__)

READ_BATCH = 1000  # events read per query; a larger backlog takes several within one pass
WAKE_CHANNEL = "renkei:events"  # Redis pub/sub channel: "numbered events are waiting" (no payload of use)


class Subscriber(Protocol):
    network_id: str

    def offer(self, event: Event) -> None: ...


class Hub:
    def __init__(self, ctx: ShareContext) -> None:
        self.ctx = ctx
        self.position = 0  # the last seq handed to subscribers
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._wake = asyncio.Event()
        self._started = asyncio.Event()
        self._publish: Callable[[], object] | None = None
        # Called with each pass's urgent events (Web Push: services/share/push/urgent.py), as a task of its own so
        # that a slow push service never holds back the WebSocket connections.
        self.on_urgent: Callable[[list[Event]], Awaitable[None]] | None = None
        self._urgent_tasks: set[asyncio.Future[None]] = set()

    # Subscribers ---------------------------------------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(subscriber.network_id, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        found = self._subscribers.get(subscriber.network_id)
        if found is not None:
            found.discard(subscriber)
            if not found:
                del self._subscribers[subscriber.network_id]

    @property
    def connections(self) -> int:
        return sum(len(found) for found in self._subscribers.values())

    async def started(self) -> None:
        await self._started.wait()

    # Passes ----------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled (the application's shutdown)."""
        self.position = await self.ctx.run_upkeep(self._head)
        self._started.set()
        poll = self.ctx.settings.event_poll_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                await self.one_pass()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is away: the next pass tries again
                log.error("event_pass_failed", error=type(error).__name__)
                await asyncio.sleep(poll)

    async def one_pass(self) -> None:
        numbered = await self.ctx.run_upkeep(self._sequence)
        if numbered and self._publish is not None:
            self._publish()
        urgent: list[Event] = []
        while True:
            events = await self.ctx.run_upkeep(lambda: self._read(self.position))
            for event in events:
                self.position = event.seq
                for subscriber in tuple(self._subscribers.get(event.network_id, ())):
                    subscriber.offer(event)
                if event.kind == "urgent":
                    urgent.append(event)
            if len(events) < READ_BATCH:
                break
        if urgent and self.on_urgent is not None:
            task = asyncio.ensure_future(self.on_urgent(urgent))
            self._urgent_tasks.add(task)
            task.add_done_callback(self._urgent_tasks.discard)

    async def number_now(self) -> None:
        """Number what has committed so far, before a request that needs its write's place in the log (read
        receipts); the subscribers are served by the pass this wakes."""
        if await self.ctx.run_upkeep(self._sequence):
            if self._publish is not None:
                self._publish()
            self.wake()

    def _head(self) -> int:
        with self.ctx.db.reading() as db:
            return head(db)

    def _sequence(self) -> int:
        with self.ctx.db.transaction() as db:
            return sequence_pending(db)

    def _read(self, after: int) -> list[Event]:
        with self.ctx.db.reading() as db:
            return events_after(db, after, READ_BATCH)

    # Across instances --------------------------------------------------------------------------------------------

    async def listen(self, redis_url: str) -> None:
        """Runs until cancelled: publish "numbered" after this process's passes, wake on the others'. While Redis is
        away, the poll interval carries the events instead; its loss and return are each logged once."""
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        pending: set[asyncio.Task[object]] = set()

        def published(task: asyncio.Task[object]) -> None:
            pending.discard(task)
            if not task.cancelled():
                task.exception()  # a lost wake-up is covered by the poll; retrieved so asyncio does not warn

        def publish() -> None:
            task: asyncio.Task[object] = asyncio.ensure_future(client.publish(WAKE_CHANNEL, b"1"))
            pending.add(task)
            task.add_done_callback(published)

        failing = False
        try:
            while True:
                try:
                    async with client.pubsub() as channel:
                        await channel.subscribe(WAKE_CHANNEL)
                        self._publish = publish
                        if failing:
                            log.info("event_wakeups_restored")
                            failing = False
                        async for message in channel.listen():
                            if message.get("type") == "message":
                                self.wake()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self._publish = None
                    if not failing:
                        log.warning("event_wakeups_unavailable", error=type(error).__name__)
                        failing = True
                    await asyncio.sleep(1.0)
        finally:
            self._publish = None
            await client.aclose()
