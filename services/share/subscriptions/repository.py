"""Every query of the ``subscriptions`` table: registering, finding a caller's own, claiming the due ones."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from services.kit.tokens import Principal
from services.share.subscriptions.models import SubscriptionState

LIVE = ("requested", "active")  # the statuses the worker delivers to


@dataclass(frozen=True)
class Claimed:
    """A subscription the worker delivers to in this pass, read out of its session (the HTTP call happens after
    the claiming transaction committed)."""

    id: str
    network_id: str
    owner_kind: str
    owner_subject: str
    owner_organization: str
    owner_profession: str | None
    owner_scopes: str
    topic: str
    patient_id: str
    endpoint: str
    content: str
    heartbeat_seconds: int
    status: str
    cursor: int
    events_since_start: int
    failures: int
    heartbeat_due: datetime


def owner_of(row: Claimed | SubscriptionState) -> Principal:
    """The owner as a Principal again, for the access decision at delivery (no session, no device: the owner's
    standing access, as their token described it when they subscribed)."""
    return Principal(kind=row.owner_kind, subject=row.owner_subject, network=row.network_id,
                     organization=row.owner_organization, profession=row.owner_profession,
                     scopes=list(orjson.loads(row.owner_scopes)), session=None, device=None, claims={})


def owns(row: SubscriptionState, principal: Principal) -> bool:
    """The owner (the same user or client) or an administrator of the network."""
    if row.network_id != principal.network:
        return False
    return (row.owner_kind == principal.kind and row.owner_subject == principal.subject) or principal.is_admin


def found(db: Session, network_id: str, subscription_id: str) -> SubscriptionState | None:
    row = db.get(SubscriptionState, subscription_id)
    return row if row is not None and row.network_id == network_id else None


def visible_to(db: Session, principal: Principal) -> list[SubscriptionState]:
    """The caller's own subscriptions (a network administrator: every one of the network), newest first."""
    query = select(SubscriptionState).where(SubscriptionState.network_id == principal.network,
                                            SubscriptionState.status != "off")
    if not principal.is_admin:
        query = query.where(SubscriptionState.owner_kind == principal.kind,
                            SubscriptionState.owner_subject == principal.subject)
    return list(db.scalars(query.order_by(SubscriptionState.created.desc()).limit(200)))


def claim_due(db: Session, now: datetime, head: int, lease_until: datetime, limit: int) -> list[Claimed]:
    """Subscriptions with work now — a handshake to make, events after their cursor, a heartbeat due — leased to
    this instance until ``lease_until`` (their ``next_attempt``), so no other instance delivers them meanwhile.
    On PostgreSQL the rows another instance is claiming this moment are skipped, not waited for."""
    work = or_(SubscriptionState.status == "requested", SubscriptionState.cursor < head,
               SubscriptionState.heartbeat_due <= now)
    query = (select(SubscriptionState)
             .where(SubscriptionState.status.in_(LIVE), SubscriptionState.next_attempt <= now, work)
             .order_by(SubscriptionState.next_attempt).limit(limit)
             .with_for_update(skip_locked=True))
    claimed = []
    for row in db.scalars(query):
        row.next_attempt = lease_until
        claimed.append(Claimed(**{f.name: getattr(row, f.name) for f in fields(Claimed)}))
    return claimed


def record(db: Session, subscription_id: str, **values: Any) -> None:
    """The outcome of a delivery attempt (status, cursor, counters, next attempt), unless it was turned off
    meanwhile."""
    db.execute(update(SubscriptionState).where(SubscriptionState.id == subscription_id,
                                               SubscriptionState.status.in_(LIVE)).values(**values))
