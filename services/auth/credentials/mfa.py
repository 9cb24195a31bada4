"""The TOTP second factor: enrolment, verification with replay protection, recovery codes."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from services.auth.context import AuthContext
from services.auth.credentials import totp
from services.auth.directory.models import RecoveryCode, User
from services.kit.db import utcnow
from services.kit.errors import Conflict

ISSUER_LABEL = "Renkei"


def clear_second_factor(db: Session, user: User) -> None:
    user.totp_secret_sealed = None
    user.totp_enabled = False
    user.totp_last_step = 0
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


class SecondFactor:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def begin_enrolment(self, user: User) -> dict[str, str]:
        """Store a fresh, not yet active secret and return what an authenticator app needs."""
        if user.totp_enabled:
            raise Conflict("a second factor is already enrolled; an administrator can reset it", code="mfa_enrolled")
        secret = totp.new_secret()
        user.totp_secret_sealed = self.ctx.box.seal(secret.encode(), f"totp:{user.id}")
        user.totp_last_step = 0
        return {"secret": secret, "otpauth_uri": totp.provisioning_uri(secret, user.username, ISSUER_LABEL)}

    def confirm_enrolment(self, db: Session, user: User, code: str) -> list[str] | None:
        """Activate the pending secret if ``code`` proves the user holds it; return fresh recovery codes."""
        if user.totp_enabled or user.totp_secret_sealed is None:
            return None
        if not self._accept_totp(db, user, code):
            return None
        user.totp_enabled = True
        return self.new_recovery_codes(db, user)

    def verify(self, db: Session, user: User, code: str) -> str | None:
        """Check a code for an enrolled user: 'totp', 'recovery', or None (wrong, expired or replayed)."""
        if not user.totp_enabled:
            return None
        if self._accept_totp(db, user, code):
            return "totp"
        if self._use_recovery_code(db, user, code):
            return "recovery"
        return None

    def new_recovery_codes(self, db: Session, user: User) -> list[str]:
        db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        codes = totp.new_recovery_codes()
        for code in codes:
            db.add(RecoveryCode(user_id=user.id, code_hash=self._hash_code(user, code)))
        return codes

    def _accept_totp(self, db: Session, user: User, code: str) -> bool:
        if user.totp_secret_sealed is None:
            return False
        secret = self.ctx.box.open(user.totp_secret_sealed, f"totp:{user.id}").decode()
        step = totp.matching_step(secret, code)
        if step is None or step <= user.totp_last_step:
            return False  # wrong, or a code already used (replay within its window)
        # Advance the last step only if no concurrent request got there first: a compare-and-set, so two logins
        # racing with the same code cannot both pass (the row lock, or SQLite's write lock, orders them).
        advanced = db.execute(
            update(User)
            .where(User.id == user.id, User.totp_last_step < step)
            .values(totp_last_step=step)
            .execution_options(synchronize_session=False)
        )
        if advanced.rowcount != 1:  # type: ignore[attr-defined]
            return False
        user.totp_last_step = step
        return True

    def _use_recovery_code(self, db: Session, user: User, code: str) -> bool:
        # Mark it used only if it still is unused, in one statement: a code cannot be spent twice concurrently.
        spent = db.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == user.id,
                RecoveryCode.code_hash == self._hash_code(user, code),
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return bool(spent.rowcount == 1)  # type: ignore[attr-defined]

    def _hash_code(self, user: User, code: str) -> str:
        return self.ctx.box.mac(f"{user.id}:{totp.normalise_recovery_code(code)}")
