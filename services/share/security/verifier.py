"""Turning an ``Authorization`` header into a verified Principal (used by every share-service route)."""

from __future__ import annotations

from services.kit import tokens
from services.kit.settings import Settings
from services.kit.tokens import InvalidToken, Principal
from services.share.security.jwks import JwksCache


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.expected_issuer
        self.audience = settings.expected_audience
        self.leeway = settings.clock_skew_seconds
        self.jwks = JwksCache(settings.jwks_url, min_refresh_seconds=settings.jwks_min_refresh_seconds)

    async def authenticate(self, authorization: str | None) -> Principal:
        token = tokens.bearer(authorization)
        key = await self.jwks.key(tokens.unverified_kid(token))
        if key is None:
            raise InvalidToken("token key id is unknown")
        return tokens.verify(token, key, issuer=self.issuer, audience=self.audience, leeway=self.leeway)
