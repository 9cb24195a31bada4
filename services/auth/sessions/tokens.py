"""Sessions and their token pairs: opening a session, rotating refresh tokens, detecting reuse."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.auth.audit.recorder import FAILURE, SUCCESS, record
from services.auth.context import AuthContext
from services.auth.directory.models import User
from services.auth.sessions.models import Device, LoginSession, RefreshToken
from services.auth.sessions.revocation import revoke_session
from services.kit.db import utcnow
from services.kit.errors import BadRequest
from services.kit.secrets import sha256_hex

USER_SCOPE = "openid fhirUser user/*.cruds"
ADMIN_SCOPE = "admin"  # network administrator
ORG_ADMIN_SCOPE = "org-admin"  # administrator of the user's own organisation (the token's ``org`` claim)


def user_claims(user: User, session: LoginSession) -> dict[str, Any]:
    roles = [s for s, held in ((ADMIN_SCOPE, user.is_admin), (ORG_ADMIN_SCOPE, user.org_admin)) if held]
    scope = " ".join([USER_SCOPE, *roles])
    claims: dict[str, Any] = {
        "sub": user.id,
        "kind": "user",
        "net": user.network_id,
        "org": user.organization_id,
        "prof": user.profession,
        "scope": scope,
        "sid": session.id,
        "fhirUser": f"Practitioner/{user.id}",
    }
    if session.device_id:
        claims["did"] = session.device_id
    return claims


class InvalidGrant(BadRequest):
    code = "invalid_grant"


class SessionTokens:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def open(self, db: Session, user: User, device_id: str | None) -> dict[str, Any]:
        now = utcnow()
        session = LoginSession(
            id=uuid.uuid4().hex,
            user_id=user.id,
            device_id=device_id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.ctx.settings.session_max_age_seconds),
        )
        db.add(session)
        db.flush()
        return self._pair(db, user, session)

    def refresh(self, db: Session, presented: str, address: str) -> dict[str, Any]:
        now = utcnow()
        row = db.scalars(
            select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(presented)).with_for_update()
        ).first()
        if row is None:
            record(db, "refresh", FAILURE, address=address, reason="unknown_token")
            raise InvalidGrant("refresh token is invalid", keep_writes=True)
        session = db.get(LoginSession, row.session_id, with_for_update=True)
        assert session is not None
        user = db.get(User, session.user_id)
        assert user is not None
        audit = {
            "network_id": user.network_id,
            "user_id": user.id,
            "session_id": session.id,
            "device_id": session.device_id,
            "address": address,
        }
        if row.used_at is not None or not self._claim(db, row, now):
            # A rotated token came back (or is being rotated by a concurrent request): either the client or a
            # thief holds a copy. End the whole session.
            revoke_session(db, session, "refresh_token_reuse")
            record(db, "refresh_reuse_detected", FAILURE, **audit)
            raise InvalidGrant("refresh token was already used; the session has been revoked", keep_writes=True)
        reason = self._refusal(db, session, row, user, now)
        if reason:
            record(db, "refresh", FAILURE, reason=reason, **audit)
            raise InvalidGrant(f"refresh refused: {reason.replace('_', ' ')}", keep_writes=True)
        record(db, "refresh", SUCCESS, **audit)
        return self._pair(db, user, session)

    @staticmethod
    def _claim(db: Session, row: RefreshToken, now: Any) -> bool:
        """Mark the token used in one conditional statement, so that of concurrent requests presenting it only
        one rotates it on every backend (SQLite ignores FOR UPDATE)."""
        claimed = db.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == row.token_hash, RefreshToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]

    @staticmethod
    def _refusal(db: Session, session: LoginSession, row: RefreshToken, user: User, now: Any) -> str | None:
        if session.revoked_at is not None:
            return "session_revoked"
        if row.expires_at <= now or session.expires_at <= now:
            return "expired"
        if user.disabled:
            return "user_disabled"
        if session.device_id:
            device = db.get(Device, session.device_id)
            if device is None or device.revoked_at is not None:
                return "device_revoked"
        return None

    def _pair(self, db: Session, user: User, session: LoginSession) -> dict[str, Any]:
        now = utcnow()
        refresh = secrets.token_urlsafe(32)
        expires = min(now + timedelta(seconds=self.ctx.settings.refresh_token_ttl_seconds), session.expires_at)
        db.add(RefreshToken(token_hash=sha256_hex(refresh), session_id=session.id, created_at=now, expires_at=expires))
        access, lifetime = self.ctx.signer.issue(db, user_claims(user, session))
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": user_claims(user, session)["scope"],
        }
