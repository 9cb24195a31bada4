"""Password login and the second step: a password alone never yields tokens for a user with a second factor."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.auth.audit.recorder import FAILURE, SUCCESS, record
from services.auth.context import AuthContext
from services.auth.credentials.mfa import SecondFactor
from services.auth.directory.models import User
from services.auth.directory.service import Directory
from services.auth.sessions.models import Device, MfaChallenge
from services.auth.sessions.tokens import SessionTokens
from services.kit.db import utcnow
from services.kit.errors import BadRequest, Unauthorized
from services.kit.secrets import sha256_hex

MAX_CODE_ATTEMPTS = 5


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class LoginService:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.tokens = SessionTokens(ctx)
        self.second_factor = SecondFactor(ctx)
        self.directory = Directory(ctx)

    def login(
        self, db: Session, username: str, password: str, address: str, device_id: str | None = None
    ) -> dict[str, Any]:
        now = utcnow()
        self.ctx.throttle.check(db, username, address, now)
        user = db.scalars(select(User).where(User.username == username)).first()
        valid = self.ctx.passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid or user.disabled:
            self.ctx.throttle.record_failure(db, username, address, now)
            record(
                db,
                "login",
                FAILURE,
                network_id=user.network_id if user else None,
                user_id=user.id if user else None,
                address=address,
                reason="disabled" if user and valid else "bad_credentials",
            )
            # One answer for an unknown user, a wrong password and a disabled account.
            raise InvalidCredentials("invalid username or password", keep_writes=True)
        if self.ctx.passwords.needs_rehash(user.password_hash):
            user.password_hash = self.ctx.passwords.hash(password)
        self._check_device(db, user, device_id)

        # The counters are cleared only once tokens are issued: a right password with a second factor pending
        # must not wipe the failed codes, or whoever holds the password could guess codes without limit.
        if user.totp_enabled:
            return self._challenge(db, user, "verify", device_id, address)
        settings = self.directory.settings_of(db, user.network_id)
        if settings.mfa_required and self.directory.is_clinical(user.profession):
            return self._challenge(db, user, "enroll", device_id, address)
        record(
            db,
            "login",
            SUCCESS,
            network_id=user.network_id,
            user_id=user.id,
            device_id=device_id,
            address=address,
            factors=1,
        )
        self.ctx.throttle.record_success(db, username, address)
        return self.tokens.open(db, user, device_id)

    def complete(self, db: Session, mfa_token: str, code: str, address: str) -> dict[str, Any]:
        """Second step: a TOTP or recovery code (or, for enrolment, the first code from the new secret)."""
        now = utcnow()
        challenge = self.challenge(db, mfa_token)
        user = db.get(User, challenge.user_id)
        assert user is not None
        # The account or the tablet may have been shut off since the password step: no tokens then.
        if user.disabled:
            challenge.used_at = now
            record(
                db,
                "mfa",
                FAILURE,
                network_id=user.network_id,
                user_id=user.id,
                device_id=challenge.device_id,
                address=address,
                reason="disabled",
            )
            raise InvalidCredentials("invalid username or password", keep_writes=True)
        self._check_device(db, user, challenge.device_id)
        self.ctx.throttle.check(db, user.username, address, now)
        self._spend_attempt(db, challenge)
        audit = {
            "network_id": user.network_id,
            "user_id": user.id,
            "device_id": challenge.device_id,
            "address": address,
        }
        if challenge.purpose == "enroll":
            recovery = self.second_factor.confirm_enrolment(db, user, code)
            method = "enrolment" if recovery is not None else None
        else:
            recovery = None
            method = self.second_factor.verify(db, user, code)
        if method is None:
            if challenge.attempts >= MAX_CODE_ATTEMPTS:
                challenge.used_at = now  # burn it: the password must be given again
            self.ctx.throttle.record_failure(db, user.username, address, now)
            record(db, "mfa", FAILURE, purpose=challenge.purpose, attempts=challenge.attempts, **audit)
            raise InvalidCredentials(
                "the code is wrong, expired or already used", code="invalid_code", keep_writes=True
            )
        challenge.used_at = now
        self.ctx.throttle.record_success(db, user.username, address)
        record(db, "mfa", SUCCESS, method=method, **audit)
        record(db, "login", SUCCESS, factors=2, **audit)
        tokens = self.tokens.open(db, user, challenge.device_id)
        if recovery is not None:
            tokens["recovery_codes"] = recovery
        return tokens

    @staticmethod
    def _spend_attempt(db: Session, challenge: MfaChallenge) -> None:
        """Count this attempt before the code is checked, in one conditional statement, so concurrent guesses
        against one challenge each use up an attempt on every backend (SQLite ignores FOR UPDATE)."""
        spent = db.execute(
            update(MfaChallenge)
            .where(
                MfaChallenge.token_hash == challenge.token_hash,
                MfaChallenge.used_at.is_(None),
                MfaChallenge.attempts < MAX_CODE_ATTEMPTS,
            )
            .values(attempts=MfaChallenge.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidCredentials("mfa_token is invalid or expired; log in again", code="invalid_mfa_token")
        db.refresh(challenge)

    def challenge(self, db: Session, mfa_token: str, purpose: str | None = None) -> MfaChallenge:
        challenge = db.get(MfaChallenge, sha256_hex(mfa_token), with_for_update=True)
        if challenge is None or challenge.used_at is not None or challenge.expires_at <= utcnow():
            raise InvalidCredentials("mfa_token is invalid or expired; log in again", code="invalid_mfa_token")
        if purpose and challenge.purpose != purpose:
            raise BadRequest(f"this mfa_token is not for {purpose}")
        return challenge

    def _challenge(self, db: Session, user: User, purpose: str, device_id: str | None, address: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        ttl = self.ctx.settings.mfa_challenge_ttl_seconds
        db.add(
            MfaChallenge(
                token_hash=sha256_hex(token),
                user_id=user.id,
                purpose=purpose,
                device_id=device_id,
                expires_at=utcnow() + timedelta(seconds=ttl),
                attempts=0,
            )
        )
        record(
            db,
            "login_password",
            SUCCESS,
            network_id=user.network_id,
            user_id=user.id,
            device_id=device_id,
            address=address,
            next_step=purpose,
        )
        answer: dict[str, Any] = {"mfa_required": True, "mfa_token": token, "expires_in": ttl}
        if purpose == "enroll":
            answer["mfa_enrollment_required"] = True
        return answer

    @staticmethod
    def _check_device(db: Session, user: User, device_id: str | None) -> None:
        if device_id is None:
            return
        device = db.get(Device, device_id)
        if device is None or device.user_id != user.id or device.revoked_at is not None:
            raise Unauthorized("this device is not registered for the user, or has been revoked", code="invalid_device")
