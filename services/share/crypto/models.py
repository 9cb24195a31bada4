"""Data keys: one per patient compartment per network, plus one per network for everything outside a patient.

The key itself is never stored: ``wrapped`` holds it sealed under a key-encryption key (``kek_version``), so a
database dump alone decrypts nothing. Destroying a key (crypto-shredding) empties ``wrapped``; the row stays as a
tombstone so the patient's compartment cannot silently get a fresh key afterwards.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime, utcnow
from services.share.base import ShareBase

# The network's own key (resources outside any patient compartment) is stored with this patient_id. NULL would be
# more literal, but NULLs are distinct in unique constraints on SQLite and PostgreSQL (before 15's NULLS NOT
# DISTINCT), so two racing creators of the network key could both succeed.
NETWORK_KEY_PATIENT = ""


class DataKey(ShareBase):
    __tablename__ = "data_keys"
    # Its index (network_id first) also serves lookups by network, so network_id needs no index of its own.
    __table_args__ = (UniqueConstraint("network_id", "patient_id", name="uq_data_keys_network_patient"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    network_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))  # NETWORK_KEY_PATIENT ("") for the network's key
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
