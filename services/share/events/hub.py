"""This process's reader of the event log, handing each new event to the WebSocket connections of its network.

One pass: number what was committed (sequencer.py), read what was numbered since the last pass with the access
facts of its patients (teams, consent, break-the-glass grants: one query for the pass, not one per connection),
and offer each event, in order, to the connections that could see it — its patient's team members and grant
holders, found by an index — each of which decides from those facts.

A pass runs when woken — right after this process commits a write (``wake``: the application's middleware), or
when another instance says it numbered events (Redis pub/sub, ``settings.redis_url``) — and at the latest every
``settings.event_poll_seconds``. The wake-up is only a hint: it carries no event, is sent after the commit (never
inside the write's transaction), and a missed one costs at most one poll interval, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit import metrics
from services.kit.tokens import Principal
from services.share.access.decision import PatientFacts
from services.share.access.models import BreakGlassGrant
from services.share.access.projection import PROJECTED, many_patient_facts
from services.share.events.log import URGENT_KINDS, Event, events_after, head
from services.share.events.sequencer import EventPass, sequence_pending

if TYPE_CHECKING:
    from services.share.context import ShareContext

log = structlog.get_logger(__name__)
T = TypeVar("T")

# How long the access facts of a patient read by a pass serve the next ones (hub.py _facts_for): a change to their
# team, consent or grants is always read at once — it is an event of the log — so this bounds only what changes
# with no event (a consent's period ending, an invitation's approval).
FACTS_SECONDS = 0.5
FACTS_CACHED = 50_000  # patients' facts kept at most (cleared whole beyond)
READ_BATCH = 1000  # events read per query; a larger backlog takes several within one pass
WAKE_CHANNEL = "renkei:events"  # Redis pub/sub channel: "numbered events are waiting" (no payload of use)


class Subscriber(Protocol):
    network_id: str
    principal: Principal | None

    def offer(self, event: Event, seen: Facts) -> None: ...

    def tick(self, monotonic: float, wall: float) -> None: ...


@dataclass(frozen=True)
class Facts:
    """What the access decisions of one pass read, once for every connection: each patient's team and consent,
    and the unexpired break-the-glass grants of those patients (by patient and user)."""

    patients: dict[str, PatientFacts] = field(default_factory=dict)
    grants: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def of(self, subject: str) -> dict[str, PatientFacts]:
        """The facts as ``subject``'s decisions see them: with their own grants (rare: copied only then)."""
        if not self.grants:
            return self.patients
        found = self.patients
        for (patient, holder), until in self.grants.items():
            if holder == subject and patient in found:
                found = {**found, patient: replace(found[patient], break_glass_until=until)}
        return found


class Hub:
    def __init__(self, ctx: ShareContext) -> None:
        self.ctx = ctx
        self.position = 0  # the last seq handed to subscribers
        self._subscribers: dict[str, set[Subscriber]] = {}
        # (network, ("user", subject) | ("organization", id) | ("admin", "")) -> its connections
        self._by_key: dict[tuple[str, tuple[str, str]], set[Subscriber]] = {}
        self._wake = asyncio.Event()
        self._started = asyncio.Event()
        self._publish: Callable[[], object] | None = None
        self._behind_since: float | None = None  # the first wake-up not yet served by a pass (monotonic)
        # Called with each pass's urgent events (Web Push: services/share/push/urgent.py), as a task of its own so
        # that a slow push service never holds back the WebSocket connections.
        self.on_urgent: Callable[[list[Event]], Awaitable[None]] | None = None
        self._urgent_tasks: set[asyncio.Future[None]] = set()
        # A thread of the hub's own: the upkeep threads also chain the audit log, whose passes take tens of
        # milliseconds, and a pass waiting behind one would hold every connection's events back as long.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="renkei-events")
        self._event_pass = EventPass(ctx.db.url) if ctx.db.engine.dialect.name == "postgresql" else None
        # (network, patient) -> (when read, monotonic; their PatientFacts; their unexpired grants)
        self._facts_cache: dict[tuple[str, str], tuple[float, PatientFacts, dict[tuple[str, str], datetime]]] = {}

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        if self._event_pass is not None:
            self._event_pass.close()

    # Subscribers ---------------------------------------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        """An authenticated subscriber (its principal is known), indexed by who it is, so that an event is only
        decided on for the connections that could see it: of its patient's team, or holding a grant for them."""
        assert subscriber.principal is not None
        self._subscribers.setdefault(subscriber.network_id, set()).add(subscriber)
        for key in _keys(subscriber.principal):
            self._by_key.setdefault((subscriber.network_id, key), set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        found = self._subscribers.get(subscriber.network_id)
        if found is None or subscriber not in found:
            return
        found.discard(subscriber)
        if not found:
            del self._subscribers[subscriber.network_id]
        assert subscriber.principal is not None
        for key in _keys(subscriber.principal):
            indexed = self._by_key.get((subscriber.network_id, key))
            if indexed is not None:
                indexed.discard(subscriber)
                if not indexed:
                    del self._by_key[(subscriber.network_id, key)]

    def _candidates(self, event: Event, facts: Facts) -> set[Subscriber]:
        """The connections an event could go to (a superset of those the access decision lets it): every one in
        the network for a resource of no patient; else the team's practitioners and organisations (a system
        client belongs to its organisation), the patient's break-the-glass holders, and network administrators."""
        if not event.patient_id:
            return self._subscribers.get(event.network_id, set())
        patient = facts.patients.get(event.patient_id)
        keys = [("admin", "")]
        if patient is not None:
            keys += [("user" if p.kind == "practitioner" else "organization", p.member) for p in patient.team]
        keys += [("user", holder) for (granted, holder) in facts.grants if granted == event.patient_id]
        found: set[Subscriber] = set()
        for key in keys:
            found |= self._by_key.get((event.network_id, key), set())
        return found

    def connected_users(self, network_id: str) -> set[str]:
        """The users with a live connection to this instance in a network."""
        return {subscriber.principal.subject for subscriber in self._subscribers.get(network_id, ())
                if subscriber.principal is not None}

    @property
    def connections(self) -> int:
        return sum(len(found) for found in self._subscribers.values())

    async def started(self) -> None:
        await self._started.wait()

    # Passes ----------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        if self._behind_since is None:
            self._behind_since = time.monotonic()
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled (the application's shutdown)."""
        self.position = await self._run(self._head)
        self._started.set()
        clock = asyncio.ensure_future(self._keep_time())
        try:
            await self._passes()
        finally:
            clock.cancel()

    async def _keep_time(self) -> None:
        """One clock for every subscriber (their heartbeats and token expiries), instead of a timer each."""
        period = min(1.0, self.ctx.settings.ws_heartbeat_seconds / 4)
        while True:
            await asyncio.sleep(period)
            monotonic, wall = time.monotonic(), time.time()
            for found in tuple(self._subscribers.values()):
                for subscriber in tuple(found):
                    subscriber.tick(monotonic, wall)

    async def _passes(self) -> None:
        poll = self.ctx.settings.event_poll_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            behind_since, self._behind_since = self._behind_since, None
            try:
                await self.one_pass()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is away: the next pass tries again
                log.error("event_pass_failed", error=type(error).__name__)
                self._behind_since = behind_since or time.monotonic()
                metrics.set_event_log_lag(time.monotonic() - self._behind_since)
                await asyncio.sleep(poll)
                continue
            # The lag of the oldest write this pass handed on: from the wake-up its commit sent to now.
            metrics.set_event_log_lag(time.monotonic() - behind_since if behind_since is not None else 0.0)

    async def one_pass(self) -> None:
        numbered, events, facts = await self._run(lambda: self._number_and_read(self.position))
        if numbered and self._publish is not None:
            self._publish()
        urgent: list[Event] = []
        while True:
            for event in events:
                self.position = event.seq
                seen = facts.get(event.network_id, _NO_FACTS)
                for subscriber in tuple(self._candidates(event, seen)):
                    subscriber.offer(event, seen)
                if event.kind in URGENT_KINDS:
                    urgent.append(event)
            if len(events) < READ_BATCH:
                break
            events, facts = await self._run(lambda: self._read(self.position))
        if urgent and self.on_urgent is not None:
            task = asyncio.ensure_future(self.on_urgent(urgent))
            self._urgent_tasks.add(task)
            task.add_done_callback(self._urgent_tasks.discard)

    async def number_now(self) -> None:
        """Number what has committed so far, before a request that needs its write's place in the log (read
        receipts); the subscribers are served by the pass this wakes."""
        if await self._run(self._sequence):
            if self._publish is not None:
                self._publish()
            self.wake()

    def _head(self) -> int:
        with self.ctx.db.reading() as db:
            return head(db)

    def _sequence(self) -> int:
        if self._event_pass is not None:
            return self._event_pass(self.position, 1)[0]
        with self.ctx.db.transaction() as db:
            return sequence_pending(db)

    def _number_and_read(self, after: int) -> tuple[int, list[Event], dict[str, Facts]]:
        """Number what committed and read what follows ``after``: on PostgreSQL one call (EventPass), elsewhere one
        transaction; nothing read is handed on before the numbering committed."""
        if self._event_pass is not None:
            numbered, events = self._event_pass(after, READ_BATCH)
        else:
            with self.ctx.db.transaction() as db:
                numbered = sequence_pending(db)
                events = events_after(db, after, READ_BATCH)
        return numbered, events, self._facts_for(events)

    def _read(self, after: int) -> tuple[list[Event], dict[str, Facts]]:
        with self.ctx.db.reading() as db:
            events = events_after(db, after, READ_BATCH)
        return events, self._facts_for(events)

    def _facts_for(self, events: list[Event]) -> dict[str, Facts]:
        """For each network with connections here, the access facts of the events' patients: as read within the
        last FACTS_SECONDS, or now — always now for a patient whose team, consent or grants one of these events
        changed (so a removal from the team stops the flow from the event that removed them on)."""
        now = time.monotonic()
        wanted: dict[str, set[str]] = {}
        for event in events:
            if not event.patient_id:
                continue
            if event.resource_type in PROJECTED or event.kind == "break-glass":
                self._facts_cache.pop((event.network_id, event.patient_id), None)
            if self._subscribers.get(event.network_id):
                wanted.setdefault(event.network_id, set()).add(event.patient_id)
        if not wanted:
            return {}
        missing = {network: sorted(p for p in patients if not self._fresh((network, p), now))
                   for network, patients in wanted.items()}
        if any(missing.values()):
            if len(self._facts_cache) > FACTS_CACHED:
                self._facts_cache.clear()
            with self.ctx.db.reading() as db:
                for network, patients in missing.items():
                    if patients:
                        self._remember(network, _facts(db, network, patients), now)
        return {network: self._assemble(network, patients) for network, patients in wanted.items()}

    def _fresh(self, key: tuple[str, str], now: float) -> bool:
        found = self._facts_cache.get(key)
        return found is not None and now - found[0] < FACTS_SECONDS

    def _remember(self, network: str, facts: Facts, now: float) -> None:
        grants: dict[str, dict[tuple[str, str], datetime]] = {}
        for (patient, holder), until in facts.grants.items():
            grants.setdefault(patient, {})[(patient, holder)] = until
        for patient, patient_facts in facts.patients.items():
            self._facts_cache[(network, patient)] = (now, patient_facts, grants.get(patient, {}))

    def _assemble(self, network: str, patients: set[str]) -> Facts:
        found = [self._facts_cache[(network, patient)] for patient in patients]
        grants: dict[tuple[str, str], datetime] = {}
        for _, _, patient_grants in found:
            grants.update(patient_grants)
        return Facts({f.patient_id: f for _, f, _ in found}, grants)

    # Across instances --------------------------------------------------------------------------------------------

    async def listen(self, redis_url: str) -> None:
        """Runs until cancelled: publish "numbered" after this process's passes, wake on the others'. While Redis is
        away, the poll interval carries the events instead; its loss and return are each logged once."""
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        pending: set[asyncio.Task[object]] = set()

        again = False  # numbered again while a wake-up was on its way: one more follows it

        def published(task: asyncio.Task[object]) -> None:
            nonlocal again
            pending.discard(task)
            if not task.cancelled():
                task.exception()  # a lost wake-up is covered by the poll; retrieved so asyncio does not warn
            if again:
                again = False
                publish()

        def publish() -> None:
            # One wake-up on its way at a time (a round trip each cost the event loop more than the pass under
            # load); the other instances read everything numbered until they read, so one more after it suffices.
            nonlocal again
            if pending:
                again = True
                return
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


_NO_FACTS = Facts()


def _keys(principal: Principal) -> list[tuple[str, str]]:
    keys = [("user", principal.subject), ("organization", principal.organization)]
    if principal.is_admin:
        keys.append(("admin", ""))
    return keys


def _facts(db: Session, network_id: str, patient_ids: list[str]) -> Facts:
    now = datetime.now(UTC)
    grants = db.execute(select(BreakGlassGrant.patient_id, BreakGlassGrant.subject, BreakGlassGrant.expires_at).where(
        BreakGlassGrant.network_id == network_id, BreakGlassGrant.patient_id.in_(patient_ids),
        BreakGlassGrant.expires_at > now))
    return Facts(many_patient_facts(db, network_id, patient_ids, now),
                 {(patient, subject): until for patient, subject, until in grants})
