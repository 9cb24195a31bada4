"""The sharing policy of each network, as the identity service publishes it (GET /auth/networks/{id}/policy):
whether sharing needs the patient's consent, and which approvals a new care-team participant needs.

The share service holds no copy of network settings, so it asks over HTTP and remembers the answer for a short
while (``ttl_seconds``): a changed setting counts everywhere within that time. While the identity service cannot
be reached, the last answer is used; with none yet, the strictest policy (consent required, every approval).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

log = structlog.get_logger(__name__)

APPROVALS = ("invitee", "organization", "patient")


@dataclass(frozen=True)
class NetworkPolicy:
    consent_required: bool = True
    team_join_approvals: tuple[str, ...] = APPROVALS
    # An emergency sheet older than this gets a review Task (services/share/sheets/scenes.py).
    emergency_review_days: int = 90


STRICTEST = NetworkPolicy()
RETRY_SECONDS = 5.0


class NetworkPolicies:
    def __init__(self, auth_base: str, *, ttl_seconds: float = 30.0, timeout_seconds: float = 3.0) -> None:
        self.auth_base = auth_base.rstrip("/")
        self.ttl_seconds = ttl_seconds
        self.timeout_seconds = timeout_seconds
        self._known: dict[str, tuple[float, NetworkPolicy]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None

    async def of(self, network_id: str) -> NetworkPolicy:
        known = self._known.get(network_id)
        if known is not None and time.monotonic() < known[0]:
            return known[1]
        async with self._locks.setdefault(network_id, asyncio.Lock()):
            known = self._known.get(network_id)
            if known is not None and time.monotonic() < known[0]:
                return known[1]  # fetched meanwhile by the request that held the lock
            try:
                policy = _parse(await self._fetch(network_id))
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                log.warning("network_policy_unavailable", network=network_id, error=type(error).__name__)
                fallback = known[1] if known is not None else STRICTEST
                # Asked again shortly, not by every request meanwhile (each would wait for the timeout).
                self._known[network_id] = (time.monotonic() + min(self.ttl_seconds, RETRY_SECONDS), fallback)
                return fallback
            self._known[network_id] = (time.monotonic() + self.ttl_seconds, policy)
            return policy

    def current(self, network_id: str) -> NetworkPolicy:
        """The policy last fetched (``of``), for synchronous work; the strictest before any fetch."""
        known = self._known.get(network_id)
        return known[1] if known is not None else STRICTEST

    async def _fetch(self, network_id: str) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_seconds)
        answer = await self._client.get(f"{self.auth_base}/networks/{network_id}/policy")
        answer.raise_for_status()
        return answer.json()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _parse(data: Any) -> NetworkPolicy:
    approvals = tuple(data["team_join_approvals"])
    if not isinstance(data["consent_required"], bool) or not set(approvals) <= set(APPROVALS):
        raise ValueError("not a network policy")
    review_days = data.get("emergency_review_days", 90)  # absent from an identity service that predates it
    if not isinstance(review_days, int) or isinstance(review_days, bool) or review_days < 1:
        raise ValueError("not a network policy")
    return NetworkPolicy(consent_required=data["consent_required"], team_join_approvals=approvals,
                         emergency_review_days=review_days)
