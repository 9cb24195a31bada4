"""Login throttling state, kept in the database so every auth instance sees the same counts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.auth.base import AuthBase
from services.kit.db import UTCDateTime


class ThrottleCounter(AuthBase):
    __tablename__ = "throttle_counters"

    # "acct-ip:<username>|<address>", "acct:<username>" or "ip:<address>"; usernames are keys whether or not
    # the account exists, so throttling reveals nothing about which accounts exist.
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
