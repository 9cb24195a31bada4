"""A Subscription's delivery state, beside the Subscription resource itself (which the store keeps, encrypted).

The resource says what the client asked for; this row is what the delivery worker needs on every pass without
decrypting anything: whose access decides what is sent (the owner's token claims, kept so the decision can be made
again at each delivery, after the token has long expired), where the cursor in the event log stands, and when to
try next. The channel's headers (often a bearer token for the receiver) are not copied here: they stay in the
encrypted resource and are read only when a notification is sent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class SubscriptionState(ShareBase):
    __tablename__ = "subscriptions"
    # The worker's question on each pass: which subscriptions are due (services/share/subscriptions/repository.py).
    __table_args__ = (Index("ix_subscriptions_due", "status", "next_attempt"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    owner_kind: Mapped[str] = mapped_column(String(16))  # "user" or "system"
    owner_subject: Mapped[str] = mapped_column(String(200))
    owner_organization: Mapped[str] = mapped_column(String(64))
    owner_profession: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner_scopes: Mapped[str] = mapped_column(Text)  # JSON list of the token's scopes at creation
    topic: Mapped[str] = mapped_column(String(200))
    patient_id: Mapped[str] = mapped_column(String(64))  # the filter criteria's patient; "" for every patient
    endpoint: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(String(16))  # id-only or full-resource
    heartbeat_seconds: Mapped[int] = mapped_column(Integer)  # 0: no heartbeats
    status: Mapped[str] = mapped_column(String(16))  # requested, active, error, off
    start: Mapped[int] = mapped_column(BigInteger)  # the event log's head when it was created: its events follow
    cursor: Mapped[int] = mapped_column(BigInteger)  # the last event seq this subscription is done with
    events_since_start: Mapped[int] = mapped_column(BigInteger)
    failures: Mapped[int] = mapped_column(Integer)  # consecutive failed attempts
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime)  # also the lease of the instance delivering it
    heartbeat_due: Mapped[datetime] = mapped_column(UTCDateTime)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
