"""The event log: one row per committed write of a resource, appended in the writing transaction (DESIGN.md §8).

A database trigger on ``resource_versions`` appends the row (migration 0011), so no write path of the share service
can forget it and a rolled-back write leaves none. The row carries ids only — no clinical text: which resource
(type, id, version), whose compartment (patient), what happened (created, updated, deleted), and what the access
decision at delivery needs besides the patient (the author's organisation, whether the sheet is a draft).

``seq`` is given after the commit by the sequencer (services/share/events/sequencer.py), one pass at a time, so
that sequence numbers become visible in increasing order: a reader that has seen ``seq`` n has seen every
event below it. Ids from a database sequence assigned inside writing transactions commit out of order (id 9 of a
slow transaction after id 10), which would let a reader's cursor pass an event still to come.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class EventEntry(ShareBase):
    __tablename__ = "event_log"
    __table_args__ = (
        # Few indexes: every event is written twice (appended, then numbered), and each index costs both writes.
        # Numbered events only (an append adds no entry); a replay of one network filters this index's order.
        Index("ix_event_log_seq", "seq", unique=True, postgresql_where=text("seq IS NOT NULL"),
              sqlite_where=text("seq IS NOT NULL")),
        # The sequencer's work list: committed events still without a seq (few at any time).
        Index("ix_event_log_unsequenced", "id", postgresql_where=text("seq IS NULL"),
              sqlite_where=text("seq IS NULL")),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))  # "" for a resource in no patient's compartment
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # created, updated, deleted
    author_organization: Mapped[str] = mapped_column(String(64))
    draft: Mapped[bool] = mapped_column(Boolean)  # a sheet not yet shared: only its author's organisation sees it
    recorded: Mapped[datetime] = mapped_column(UTCDateTime)
