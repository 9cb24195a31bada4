"""Imports every model so ``AuthBase.metadata`` is complete (for Alembic and the schema test)."""

from services.auth.audit.models import SecurityEvent
from services.auth.base import AuthBase
from services.auth.clients.models import SystemClient, UsedAssertion
from services.auth.credentials.models import ThrottleCounter
from services.auth.directory.models import Network, Organization, RecoveryCode, User
from services.auth.sessions.models import Device, LoginSession, MfaChallenge, RefreshToken
from services.auth.signing.models import SigningKey

__all__ = [
    "AuthBase",
    "Device",
    "LoginSession",
    "MfaChallenge",
    "Network",
    "Organization",
    "RecoveryCode",
    "RefreshToken",
    "SecurityEvent",
    "SigningKey",
    "SystemClient",
    "ThrottleCounter",
    "UsedAssertion",
    "User",
]
