"""The resource store: every version of every resource, encrypted; a head row per resource; a search index.

Nothing here holds patient data in plain text: bodies are AES-256-GCM ciphertexts under per-patient data keys,
and the search index holds keyed hashes (blind indexes), server-assigned references and dates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime, utcnow
from services.share.base import ShareBase


class ResourceHead(ShareBase):
    """The current version of a resource: what reads and searches start from."""

    __tablename__ = "resources"
    __table_args__ = (
        Index("ix_resources_network_type_updated", "network_id", "resource_type", "last_updated"),
        Index("ix_resources_patient", "patient_id"),
    )

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64))
    # The patient compartment the resource belongs to ("" when it belongs to none); chooses its data key.
    patient_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)


class ResourceVersion(ShareBase):
    """One version, kept forever (history and vread); ``body`` is empty for a delete."""

    __tablename__ = "resource_versions"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    network_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    data_key_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    method: Mapped[str] = mapped_column(String(8))  # POST, PUT or DELETE, for history entries
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    author: Mapped[str] = mapped_column(String(200))
    # The author's organisation: without the patient's consent, an organisation sees only what its own members
    # wrote (services/share/access/gate.py).
    author_organization: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Where a sheet's labelled sections lie in its JSON (services/share/access/layout.py): codes and offsets only.
    layout: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class SearchEntry(ShareBase):
    """One searchable value of a current resource version. ``value`` is a blind-index token, or a reference."""

    __tablename__ = "search_index"
    __table_args__ = (
        Index("ix_search_index_lookup", "network_id", "resource_type", "param", "value"),
        # Date rows only (a tenth of the rows): an index over every row wrote a tenth of a shared sheet's WAL for
        # entries no date search reads (bench/RESULTS.md). Date searches say ``date_low IS NOT NULL`` (search.py).
        Index("ix_search_index_dates", "network_id", "resource_type", "param", "date_low",
              postgresql_where=text("date_low IS NOT NULL"), sqlite_where=text("date_low IS NOT NULL")),
        Index("ix_search_index_resource", "resource_type", "resource_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    network_id: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[str | None] = mapped_column(String(200), nullable=True)
    date_low: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    date_high: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IdempotencyRecord(ShareBase):
    """The first answer to a POST with an ``Idempotency-Key``: a retry gets it again instead of a duplicate."""

    __tablename__ = "idempotency_keys"

    network_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    # For a batch or transaction: each entry's outcome as {method, status, type, id, version} or {status, code} —
    # references to stored versions and error codes only, never resource content.
    entries: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
