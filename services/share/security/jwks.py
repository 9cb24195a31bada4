"""The identity service's public keys, fetched over HTTP and cached.

The share service trusts the identity service only through these keys — also in the one-process embedded mode,
where the fetch goes to our own ``/auth/jwks.json`` over loopback. An unknown ``kid`` triggers a refetch (key
rotation), rate-limited so a flood of forged kids cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import structlog

from services.kit.errors import RenkeiError
from services.kit.peers import get, peer_client
from services.kit.tokens import keys_from_jwks

log = structlog.get_logger(__name__)


class JwksUnavailable(RenkeiError):
    """The identity service's keys cannot be had: the caller cannot be verified now, so 503, not 401."""

    status_code = 503
    code = "jwks_unavailable"


class JwksCache:
    def __init__(self, url: str, *, min_refresh_seconds: float = 10.0, max_age_seconds: float = 300.0) -> None:
        self.url = url
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._attempted_at = 0.0  # the last fetch attempt, whether or not it succeeded
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    def fresh_key(self, kid: str) -> Any | None:
        """The key with this id if it is cached and the cache is not due for a refresh; no fetching."""
        if time.monotonic() - self._fetched_at < self.max_age_seconds:
            return self._keys.get(kid)
        return None

    async def key(self, kid: str) -> Any | None:
        key = self._keys.get(kid)
        if key is not None and time.monotonic() - self._fetched_at < self.max_age_seconds:
            return key
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= self.max_age_seconds
            # The rate limit counts failed attempts too: while the identity service is down, forged kids (or a
            # stale cache) must not turn every request into a fetch attempt.
            due = not self._attempted_at or now - self._attempted_at >= self.min_refresh_seconds
            if due and (kid not in self._keys or stale):
                try:
                    await self.refresh()
                except JwksUnavailable:
                    if not self._keys:
                        raise
                    log.warning("jwks_refresh_failed_using_cached_keys", url=self.url)
                finally:
                    self._attempted_at = time.monotonic()
            elif not self._keys:
                raise JwksUnavailable(f"no keys from {self.url} yet; the last fetch failed")
            return self._keys.get(kid)

    async def refresh(self) -> None:
        if self._client is None:
            self._client = peer_client(5.0)
        try:
            response = await get(self._client, self.url)
            response.raise_for_status()
            keys = keys_from_jwks(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            raise JwksUnavailable(f"cannot fetch JWKS from {self.url}: {error}") from error
        self._keys = keys
        self._fetched_at = time.monotonic()

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
