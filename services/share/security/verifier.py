"""Turning an ``Authorization`` header into a verified Principal (used by every share-service route)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from services.kit import tokens
from services.kit.settings import Settings
from services.kit.tokens import InvalidToken, Principal
from services.share.security.jwks import JwksCache


class _Verified(NamedTuple):
    principal: Principal
    kid: str
    key: Any  # the signing key it was verified with
    expires_at: float


class TokenVerifier:
    """Verifies ES256 access tokens against the identity service's JWKS.

    A tablet sends the same token with every request for its lifetime, and an ES256 signature check is the
    largest fixed cost of a request (≈ 0.17 ms). So a token that verified is remembered until it expires, for as
    long as the key that signed it is still published: a rotated-out key or an expired token is never accepted
    from memory. Failures are never remembered.
    """

    CACHE_SIZE = 10_000

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.expected_issuer
        self.audience = settings.expected_audience
        self.leeway = settings.clock_skew_seconds
        self.jwks = JwksCache(settings.jwks_url, min_refresh_seconds=settings.jwks_min_refresh_seconds)
        self._verified: dict[str, _Verified] = {}

    async def authenticate(self, authorization: str | None, *, remember: bool = True) -> Principal:
        """``remember`` off: a token verified once for a long-lived use (a WebSocket) need not take a place."""
        token = tokens.bearer(authorization)
        known = self._verified.get(token)
        # Even parsing the token's header costs more than this lookup (PyJWT checks base64 per character).
        if known is not None and time.time() < known.expires_at and self.jwks.fresh_key(known.kid) is known.key:
            return known.principal
        kid = tokens.unverified_kid(token)
        key = await self.jwks.key(kid)
        if key is None:
            raise InvalidToken("token key id is unknown")
        principal = tokens.verify(token, key, issuer=self.issuer, audience=self.audience, leeway=self.leeway)
        if remember:
            self._remember(token, principal, kid, key)
        return principal

    def _remember(self, token: str, principal: Principal, kid: str, key: Any) -> None:
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = _Verified(principal, kid, key, float(principal.claims["exp"]))
