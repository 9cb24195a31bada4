"""The audit log: one row per access, append-only, hash-chained (services/share/audit/chain.py).

A row names who acted (an opaque user or client id), in which network, on which patient (an opaque id), the FHIR
action and outcome; ``event`` is the full AuditEvent, sealed under the network's data key like any resource body.
Nothing here is patient data in plain text.

The chainer links each row after its predecessor in a row of its own (``audit_chain``), so neither table is ever
updated: a row is written once, whole. On PostgreSQL triggers refuse every change and every delete of either
(migration 0009).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class AuditEntry(ShareBase):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_patient", "network_id", "patient_id", "recorded"),
        Index("ix_audit_log_agent", "network_id", "agent", "recorded"),
        {"sqlite_autoincrement": True},  # never reuse a seq, even one cut off the end
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    network_id: Mapped[str] = mapped_column(String(64))
    recorded: Mapped[datetime] = mapped_column(UTCDateTime)
    agent: Mapped[str] = mapped_column(String(200))  # the token's subject: a user or client id
    patient_id: Mapped[str] = mapped_column(String(64))  # "" when the access concerns no one patient
    action: Mapped[str] = mapped_column(String(1))  # C R U D E, as AuditEvent.action
    outcome: Mapped[str] = mapped_column(String(2))  # 0 4 8 12, as AuditEvent.outcome
    data_key_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[bytes] = mapped_column(LargeBinary)  # the sealed AuditEvent JSON (services/share/audit/events.py)


class AuditLink(ShareBase):
    """Where the chainer linked audit-log row ``seq``: after row ``prev_seq`` (0 for the first), and the chain's
    digest up to and including it."""

    __tablename__ = "audit_chain"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    prev_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    digest: Mapped[bytes] = mapped_column(LargeBinary)


class AuditChainHead(ShareBase):
    """Where the chain ends (one row, id 1): a row cut off the end of the log no longer matches it."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    updated: Mapped[datetime] = mapped_column(UTCDateTime)
