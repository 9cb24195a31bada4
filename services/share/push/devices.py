"""Browsers registered for Web Push, and which urgent event each has been sent.

A device is a browser's PushSubscription (RFC 8030 endpoint, RFC 8291 keys) held for the user who registered it.
The endpoint is the device's identity: a browser keeps it across logins, so registering it again moves it to the
new user rather than waking two people on one tablet.

Every instance reads the same event log, so every instance would wake the same device for the same urgent
event. ``web_push_sent`` holds one row per (event, device): an instance inserts the row before it sends, and a
conflict means another instance has taken that push.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Index, Integer, String, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.kit.db import UTCDateTime, utcnow
from services.share.base import ShareBase

CLAIMS_KEPT = timedelta(days=1)  # a claim only matters while instances may still read its event


class WebPushDevice(ShareBase):
    __tablename__ = "web_push_devices"
    __table_args__ = (Index("ix_web_push_devices_user", "network_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(1000), unique=True)
    p256dh: Mapped[str] = mapped_column(String(100))  # the browser's ECDH public key, base64url
    auth: Mapped[str] = mapped_column(String(40))  # the browser's 16-byte authentication secret, base64url
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    last_success: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed pushes


class WebPushSent(ShareBase):
    __tablename__ = "web_push_sent"
    __table_args__ = (Index("ix_web_push_sent_claimed", "claimed"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    claimed: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True, slots=True)
class Target:
    """What sending to one device needs, read before the session closes."""

    id: str
    endpoint: str
    p256dh: str
    auth: str


def register(db: Session, network_id: str, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
    """Add the device, or give an endpoint already known to this user with these keys (a new login, new keys)."""
    found = db.scalar(select(WebPushDevice).where(WebPushDevice.endpoint == endpoint))
    if found is None:
        db.add(WebPushDevice(id=uuid.uuid4().hex, network_id=network_id, user_id=user_id, endpoint=endpoint,
                             p256dh=p256dh, auth=auth, created=utcnow(), failures=0))
        return
    found.network_id, found.user_id, found.p256dh, found.auth, found.failures = network_id, user_id, p256dh, auth, 0


def unregister(db: Session, network_id: str, user_id: str, endpoint: str) -> bool:
    """Remove the caller's own device with this endpoint; False when they have none."""
    removed = db.scalars(delete(WebPushDevice).where(
        WebPushDevice.endpoint == endpoint, WebPushDevice.network_id == network_id,
        WebPushDevice.user_id == user_id).returning(WebPushDevice.id))
    return removed.first() is not None


def devices_of(db: Session, network_id: str, user_ids: set[str]) -> list[Target]:
    if not user_ids:
        return []
    rows = db.execute(select(WebPushDevice.id, WebPushDevice.endpoint, WebPushDevice.p256dh, WebPushDevice.auth)
                      .where(WebPushDevice.network_id == network_id, WebPushDevice.user_id.in_(sorted(user_ids)))
                      .order_by(WebPushDevice.id))
    return [Target(*row) for row in rows]


def claim(db: Session, seq: int, targets: list[Target]) -> list[Target]:
    """The targets this instance sends event ``seq`` to: those no instance had claimed (claims older than a day are
    forgotten on the way)."""
    now = utcnow()
    db.execute(delete(WebPushSent).where(WebPushSent.claimed < now - CLAIMS_KEPT))
    if not targets:
        return []
    insert = postgres_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    rows = [{"seq": seq, "device_id": target.id, "claimed": now} for target in targets]
    taken = set(db.scalars(insert(WebPushSent).values(rows).on_conflict_do_nothing()
                           .returning(WebPushSent.device_id)))
    return [target for target in targets if target.id in taken]


def delivered(db: Session, device_id: str) -> None:
    db.execute(update(WebPushDevice).where(WebPushDevice.id == device_id).values(last_success=utcnow(), failures=0))


def failed(db: Session, device_id: str) -> None:
    db.execute(update(WebPushDevice).where(WebPushDevice.id == device_id)
               .values(failures=WebPushDevice.failures + 1))


def gone(db: Session, device_id: str) -> None:
    """The push service says the subscription no longer exists (404, 410): nothing will reach it again."""
    db.execute(delete(WebPushDevice).where(WebPushDevice.id == device_id))
