"""Ending sessions. A revoked session can no longer refresh; its access tokens die within their lifetime."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.auth.sessions.models import LoginSession, MfaChallenge
from services.kit.db import utcnow


def revoke_session(db: Session, session: LoginSession, reason: str) -> None:
    if session.revoked_at is None:
        session.revoked_at = utcnow()
        session.revoked_reason = reason


def _revoke_where(db: Session, reason: str, *conditions: object) -> int:
    result = db.execute(
        update(LoginSession)
        .where(LoginSession.revoked_at.is_(None), *conditions)  # type: ignore[arg-type]
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def revoke_user_sessions(db: Session, user_id: str, reason: str) -> int:
    """End every session of a user, and every login half-way through its second step."""
    db.execute(
        update(MfaChallenge)
        .where(MfaChallenge.user_id == user_id, MfaChallenge.used_at.is_(None))
        .values(used_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return _revoke_where(db, reason, LoginSession.user_id == user_id)


def revoke_device_sessions(db: Session, device_id: str, reason: str) -> int:
    return _revoke_where(db, reason, LoginSession.device_id == device_id)
