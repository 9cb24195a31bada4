"""Throttling of failed logins per account, per client address, and per account-and-address pair.

Every lock expires: the back-off doubles per failure beyond a free allowance and is capped, and counts reset
after a quiet window. The account-wide lock (which an attacker from elsewhere could trigger) is capped far lower
than the pair lock, so nobody can keep a user out of their own account for more than a minute at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.auth.credentials.models import ThrottleCounter
from services.kit.errors import TooManyRequests
from services.kit.settings import Settings


@dataclass(frozen=True)
class Policy:
    free_failures: int
    max_lock_seconds: int


class LoginThrottle:
    def __init__(self, settings: Settings) -> None:
        self.window = timedelta(seconds=settings.throttle_window_seconds)
        self.policies = {
            "acct-ip": Policy(settings.throttle_account_ip_free, settings.throttle_max_lock_seconds),
            "acct": Policy(settings.throttle_account_free, settings.throttle_account_max_lock_seconds),
            "ip": Policy(settings.throttle_ip_free, settings.throttle_max_lock_seconds),
        }

    @staticmethod
    def keys(username: str, address: str) -> dict[str, str]:
        name = username.strip().lower()
        return {"acct-ip": f"acct-ip:{name}|{address}", "acct": f"acct:{name}", "ip": f"ip:{address}"}

    def check(self, db: Session, username: str, address: str, now: datetime) -> None:
        """Refuse the attempt (429) while any of its counters is locked."""
        keys = list(self.keys(username, address).values())
        counters = db.scalars(select(ThrottleCounter).where(ThrottleCounter.key.in_(keys)))
        wait = max(
            ((c.locked_until - now).total_seconds() for c in counters if c.locked_until and c.locked_until > now),
            default=0.0,
        )
        if wait > 0:
            raise TooManyRequests("too many failed attempts; try again later", retry_after=int(wait + 0.999))

    def record_failure(self, db: Session, username: str, address: str, now: datetime) -> None:
        for kind, key in self.keys(username, address).items():
            counter = self._locked_row(db, key, now)
            if now - counter.last_failure_at > self.window:
                counter.failures = 0
            counter.failures += 1
            counter.last_failure_at = now
            policy = self.policies[kind]
            beyond = counter.failures - policy.free_failures
            if beyond > 0:
                seconds = min(2 ** min(beyond - 1, 20), policy.max_lock_seconds)
                counter.locked_until = now + timedelta(seconds=seconds)

    def record_success(self, db: Session, username: str, address: str) -> None:
        keys = self.keys(username, address)
        for key in (keys["acct-ip"], keys["acct"]):
            counter = db.get(ThrottleCounter, key)
            if counter is not None:
                db.delete(counter)

    @staticmethod
    def _locked_row(db: Session, key: str, now: datetime) -> ThrottleCounter:
        # Insert-if-absent then lock the row, so concurrent failures on several instances all count.
        dialect = db.get_bind().dialect.name
        values = {"key": key, "failures": 0, "last_failure_at": now}
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        db.execute(insert(ThrottleCounter).values(**values).on_conflict_do_nothing(index_elements=["key"]))
        row = db.scalars(
            select(ThrottleCounter)
            .where(ThrottleCounter.key == key)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        return row
