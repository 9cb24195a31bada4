"""The delivery worker: each share process runs one; together they deliver every live subscription, each by one
instance at a time.

A pass claims the subscriptions that have work (a handshake, events after their cursor, a heartbeat due) in a short
transaction that leases them to this instance (``next_attempt`` moved past the longest attempt; on PostgreSQL the
rows are claimed ``FOR UPDATE SKIP LOCKED``, so instances never wait for each other). Then, outside any
transaction, each is sent what it has to hear, and the outcome is written. The cursor moves only after the
receiver answered 2xx — delivery is at least once, and ``eventNumber`` lets the receiver drop a repeat. A receiver
that fails is tried again after 1, 2, 4 … seconds (capped), and is set to ``error`` after
``settings.subscription_max_failures`` failures in a row.

Push wakes, storage tells: nothing here trusts memory. Which events a subscription hears of is read from the event
log after its cursor, and decided by the owner's access at the moment of delivery (access/gate.py), so a client
removed from a patient's team stops hearing of the patient from the next pass on.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import structlog
from sqlalchemy.orm import Session

from services.kit import metrics
from services.kit.db import utcnow
from services.kit.errors import RenkeiError
from services.kit.outbound import checked_endpoint
from services.kit.tokens import Principal
from services.share.access.gate import Seen, seen
from services.share.events.log import Event, events_after, head
from services.share.fhir import auditing
from services.share.store.service import Caller
from services.share.subscriptions import notifications, repository
from services.share.subscriptions.repository import Claimed, owner_of
from services.share.subscriptions.topics import TOPICS

if TYPE_CHECKING:
    from services.share.context import ShareContext

log = structlog.get_logger(__name__)

CLAIM_BATCH = 50  # subscriptions claimed per pass
EVENT_BATCH = 200  # events read for one subscription per attempt; a larger backlog takes several
NEVER = datetime(9999, 1, 1, tzinfo=UTC)  # the heartbeat of a subscription that asked for none
SERVER = "system:renkei"


@dataclass
class Work:
    """What one attempt sends, read in one session: where the cursor moves on success, what is notified."""

    cursor: int
    notified: list[notifications.Notified] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    seen: Seen | None = None


class Deliveries:
    def __init__(self, ctx: ShareContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Runs until cancelled (the application's shutdown)."""
        self._client = httpx.AsyncClient(timeout=self.settings.subscription_timeout_seconds,
                                         follow_redirects=False)  # a redirect could point anywhere (SSRF)
        try:
            await self.ctx.every(self.settings.subscription_poll_seconds, self.one_pass, "subscription_pass_failed")
        finally:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    async def one_pass(self) -> int:
        """Deliver to every subscription that has work now; how many were attempted."""
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.subscription_timeout_seconds * 3 + 30)
        claimed = await self.ctx.run_upkeep(lambda: self._claim(now, lease))
        await asyncio.gather(*(self._deliver(item) for item in claimed))
        return len(claimed)

    def _claim(self, now: datetime, lease: datetime) -> list[Claimed]:
        with self.ctx.db.transaction() as db:
            return repository.claim_due(db, now, head(db), lease, CLAIM_BATCH)

    # One subscription -----------------------------------------------------------------------------------------

    async def _deliver(self, item: Claimed) -> None:
        if item.failures:
            metrics.delivery_retried("rest-hook")
        try:
            await self.ctx.policies.of(item.network_id)  # for the access decisions of the owner's network
            work = await self.ctx.run_upkeep(lambda: self._prepare(item))
            changes = await self._send(item, work)
        except Exception as error:  # the database is away, a bug: the next attempt comes after a backoff
            log.error("subscription_attempt_failed", subscription=item.id, error=type(error).__name__)
            metrics.delivery_failed("rest-hook", "error")
            changes = self._failed(item)
        await self.ctx.run_upkeep(lambda: self._record(item, changes, work_seen(changes)))

    def _prepare(self, item: Claimed) -> Work:
        with self.ctx.db.transaction() as db:
            headers = self._headers(db, item)
            if item.status == "requested":
                return Work(item.cursor, headers=headers)
            return self._events(db, item, headers)

    def _headers(self, db: Session, item: Claimed) -> dict[str, str]:
        """The channel's headers, kept only in the encrypted Subscription resource."""
        body = orjson.loads(self.ctx.store.read(db, Caller(item.network_id, SERVER), "Subscription", item.id).body)
        found: dict[str, str] = {}
        for line in (body.get("channel") or {}).get("header") or []:
            name, _, value = str(line).partition(":")
            found[name.strip()] = value.strip()
        return found

    def _events(self, db: Session, item: Claimed, headers: dict[str, str]) -> Work:
        """The events after the cursor this subscription is told of: of its topic (and patient), and those its owner
        may read now. The cursor passes every event read, told or not."""
        top = head(db)
        events = [e for e in events_after(db, item.cursor, EVENT_BATCH, item.network_id) if e.seq <= top]
        cursor = events[-1].seq if len(events) == EVENT_BATCH else max(top, item.cursor)
        notified = told(self.ctx, db, owner_of(item),
                        [e for e in events if TOPICS[item.topic].matches(e, item.patient_id)], item.content)
        return Work(cursor, notified, headers, seen(db))

    async def _send(self, item: Claimed, work: Work) -> dict[str, Any]:
        base = self.settings.fhir_base
        now = utcnow()
        if item.status == "requested":
            kind, count, events = "handshake", item.events_since_start, []
        elif work.notified:
            kind, count, events = "event-notification", item.events_since_start + len(work.notified), work.notified
        elif item.heartbeat_due <= now:
            kind, count, events = "heartbeat", item.events_since_start, []
        else:  # nothing this subscription hears of: the cursor moves on, nothing is sent
            return {"cursor": work.cursor, "next_attempt": now}
        status = notifications.status(base, item.id, item.topic, "requested" if kind == "handshake" else "active",
                                      kind, count, events)
        body = notifications.bundle(base, item.id, status, events)
        if not await self._post(item, body, work.headers):
            return self._failed(item)
        changes: dict[str, Any] = {"status": "active", "failures": 0, "next_attempt": now, "cursor": work.cursor,
                                   "events_since_start": count, "heartbeat_due": self._heartbeat_due(item, now)}
        if kind == "handshake":
            changes["cursor"] = item.cursor
        elif kind == "event-notification":
            changes["_seen"] = work.seen
        return changes

    async def _post(self, item: Claimed, body: bytes, headers: dict[str, str]) -> bool:
        assert self._client is not None
        try:
            # Checked again at each delivery: the name may resolve elsewhere now than when it was registered.
            await asyncio.to_thread(checked_endpoint, item.endpoint,
                                    allow_loopback=self.settings.outbound_allow_loopback)
            answer = await self._client.post(item.endpoint, content=body,
                                             headers={**headers, "Content-Type": "application/fhir+json"})
        except (RenkeiError, httpx.HTTPError) as error:
            log.warning("subscription_delivery_failed", subscription=item.id, error=type(error).__name__)
            metrics.delivery_failed("rest-hook", "unreachable")
            return False
        if not 200 <= answer.status_code < 300:
            log.warning("subscription_delivery_refused", subscription=item.id, status=answer.status_code)
            metrics.delivery_failed("rest-hook", "refused")
            return False
        return True

    def _failed(self, item: Claimed) -> dict[str, Any]:
        failures = item.failures + 1
        if failures >= self.settings.subscription_max_failures:
            log.warning("subscription_in_error", subscription=item.id, failures=failures)
            return {"failures": failures, "status": "error", "next_attempt": utcnow()}
        delay = min(self.settings.subscription_retry_seconds * 2 ** (failures - 1),
                    self.settings.subscription_retry_max_seconds)
        return {"failures": failures, "next_attempt": utcnow() + timedelta(seconds=delay)}

    def _heartbeat_due(self, item: Claimed, now: datetime) -> datetime:
        return now + timedelta(seconds=item.heartbeat_seconds) if item.heartbeat_seconds else NEVER

    def _record(self, item: Claimed, changes: dict[str, Any], notes: Seen | None) -> None:
        with self.ctx.db.transaction() as db:
            repository.record(db, item.id, **changes)
            if notes is not None:  # who was told of which patient's resources: audited as the owner's read
                auditing.record(self.ctx.audit, db, owner_of(item), auditing.Interaction(
                    "R", "subscription-notification", f"Subscription/{item.id}"), notes)


def told(ctx: ShareContext, db: Session, owner: Principal, events: list[Event], content: str
         ) -> list[notifications.Notified]:
    """Of ``events``, those ``owner`` may read now, each with its resource as they may see it (full-resource)."""
    decisions = ctx.gate.readable(db, owner, events)
    allowed = [event for event, decision in zip(events, decisions, strict=True) if decision is not None]
    if content != "full-resource":
        return [notifications.Notified(event) for event in allowed]
    caller = Caller(owner.network, f"{owner.kind}:{owner.subject}", owner.organization, owner)
    found = []
    for event in allowed:
        try:
            body: bytes | None = ctx.store.vread(db, caller, event.resource_type, event.resource_id,
                                                 event.version).body
        except RenkeiError:  # deleted since, or no longer theirs: the focus reference alone
            body = None
        found.append(notifications.Notified(event, body))
    return found


def work_seen(changes: dict[str, Any]) -> Seen | None:
    """The access notes of a delivered notification (taken out of the changes to write)."""
    found: Seen | None = changes.pop("_seen", None)
    return found
