"""Read receipts: how far each member has read each patient's team thread."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import UTCDateTime
from services.share.base import ShareBase


class ReadPosition(ShareBase):
    """A member has read every message of the patient's thread whose creation event is at or below ``seq`` (the
    event log's order: the order in which the team was told of the messages)."""

    __tablename__ = "read_positions"

    network_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reader: Mapped[str] = mapped_column(String(200), primary_key=True)  # Practitioner/<user id>
    seq: Mapped[int] = mapped_column(BigInteger)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime)
