"""Waking, by Web Push, the team members an urgent event is for whose app is not open (services/share/events/hub.py
calls this with each pass's urgent events, after the WebSocket connections have been served).

Who: the patient's current, approved practitioners, less the one who wrote it, less anyone with a live WebSocket
connection to this instance — their app already shows it. Each of their registered browsers gets one wake-up per
event, whichever instance sends it: the (event, device) claim in the database (devices.py) decides which.
A claim is taken before the push is sent, so a crash in between loses that one wake-up rather than sending two;
the event itself is never lost, and the app reads it from the log when opened.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit import metrics
from services.kit.errors import BadRequest
from services.kit.outbound import checked_endpoint
from services.share.access.projection import patient_facts
from services.share.context import ShareContext
from services.share.events.hub import Hub
from services.share.events.log import Event
from services.share.push import devices
from services.share.push.devices import Target
from services.share.push.webpush import Outcome, VapidKey, send, wake_payload
from services.share.store.models import ResourceVersion

log = structlog.get_logger(__name__)

SEND_TIMEOUT_SECONDS = 10.0


class UrgentPush:
    """The hub's ``on_urgent``: one instance per process."""

    def __init__(self, ctx: ShareContext, hub: Hub, vapid: VapidKey) -> None:
        self.ctx, self.hub, self.vapid = ctx, hub, vapid

    async def __call__(self, events: list[Event]) -> None:
        try:
            async with httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS) as client:
                for event in events:
                    await self._wake_for(client, event)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the database or the network is away: the app still reads the log when opened
            log.error("web_push_failed", error=type(error).__name__)
            metrics.delivery_failed("web-push", "error")

    async def _wake_for(self, client: httpx.AsyncClient, event: Event) -> None:
        connected = self.hub.connected_users(event.network_id)
        candidates = await self.ctx.run_upkeep(lambda: self._devices(event, connected))
        allowed = await asyncio.to_thread(lambda: [target for target in candidates if self._still_allowed(target)])
        targets = await self.ctx.run_upkeep(lambda: self._claim(event.seq, allowed))
        if not targets:
            return
        payload = wake_payload(event.seq)
        ttl = self.ctx.settings.web_push_ttl_seconds
        outcomes = await asyncio.gather(*(send(client, self.vapid, target, payload, ttl) for target in targets))
        await self.ctx.run_upkeep(lambda: self._record(list(zip(targets, outcomes, strict=True))))
        log.info("web_push_sent", seq=event.seq, devices=len(targets),
                 delivered=sum(outcome is Outcome.DELIVERED for outcome in outcomes))

    def _devices(self, event: Event, connected: set[str]) -> list[Target]:
        with self.ctx.db.reading() as db:
            return devices.devices_of(db, event.network_id, recipients(db, event) - connected)

    def _still_allowed(self, target: Target) -> bool:
        """The endpoint was checked when registered; its host may resolve elsewhere now (DNS rebinding)."""
        try:
            checked_endpoint(target.endpoint, allow_loopback=self.ctx.settings.outbound_allow_loopback)
        except BadRequest:
            log.warning("web_push_endpoint_refused", device=target.id)
            return False
        return True

    def _claim(self, seq: int, targets: list[Target]) -> list[Target]:
        if not targets:
            return []
        with self.ctx.db.transaction() as db:
            return devices.claim(db, seq, targets)

    def _record(self, results: list[tuple[Target, Outcome]]) -> None:
        with self.ctx.db.transaction() as db:
            for target, outcome in results:
                if outcome is Outcome.DELIVERED:
                    devices.delivered(db, target.id)
                elif outcome is Outcome.GONE:
                    devices.gone(db, target.id)
                    metrics.delivery_failed("web-push", "gone")
                else:
                    devices.failed(db, target.id)
                    metrics.delivery_failed("web-push", "failed")


def recipients(db: Session, event: Event) -> set[str]:
    """The user ids of the patient's active practitioners, without the author of the urgent write."""
    if not event.patient_id:
        return set()
    now = datetime.now(UTC)
    team = patient_facts(db, event.network_id, event.patient_id, now).team
    members = {p.member for p in team if p.kind == "practitioner" and p.active(now)}
    author = db.scalar(select(ResourceVersion.author).where(
        ResourceVersion.resource_type == event.resource_type, ResourceVersion.resource_id == event.resource_id,
        ResourceVersion.version == event.version))
    if author and author.startswith("user:"):
        members.discard(author.removeprefix("user:"))
    return members
