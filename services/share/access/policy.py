"""The sharing policy of each network, as the identity service publishes it (GET /auth/networks/{id}/policy):
whether sharing needs the patient's consent, and which approvals a new care-team participant needs.

The share service holds no copy of network settings, so it asks over HTTP and remembers the answer for a short
while (``ttl_seconds``): a changed setting counts everywhere within that time and the one fetch after it. Only a
network's first request waits for the answer: once it is known, a request finding it old is answered with it
while one background fetch renews it — every request of the network waiting on that fetch stalled them all
together every ttl (a 180 ms burst in bench/push.py's p99). While the identity service cannot be reached, the last
answer is used; with none yet, the strictest policy (consent required, every approval).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from services.kit.peers import get, peer_client

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
        self._renewing: dict[str, asyncio.Task[NetworkPolicy]] = {}
        self._client: httpx.AsyncClient | None = None

    async def of(self, network_id: str) -> NetworkPolicy:
        known = self._known.get(network_id)
        if known is not None:
            if time.monotonic() >= known[0] and network_id not in self._renewing:
                task = asyncio.ensure_future(self._renew(network_id))
                self._renewing[network_id] = task
                task.add_done_callback(lambda _: self._renewing.pop(network_id, None))
            return known[1]
        async with self._locks.setdefault(network_id, asyncio.Lock()):
            if network_id in self._known:
                return self._known[network_id][1]  # fetched meanwhile by the request that held the lock
            return await self._renew(network_id)

    async def _renew(self, network_id: str) -> NetworkPolicy:
        known = self._known.get(network_id)
        try:
            policy = _parse(await self._fetch(network_id))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            log.warning("network_policy_unavailable", network=network_id, error=type(error).__name__)
            fallback = known[1] if known is not None else STRICTEST
            # Asked again shortly, not at once by the next request.
            self._known[network_id] = (time.monotonic() + min(self.ttl_seconds, RETRY_SECONDS), fallback)
            return fallback
        self._known[network_id] = (time.monotonic() + self.ttl_seconds, policy)
        return policy

    async def renewed(self) -> None:
        """Wait for the renewals under way (a test's, or close's)."""
        await asyncio.gather(*self._renewing.values(), return_exceptions=True)

    def current(self, network_id: str) -> NetworkPolicy:
        """The policy last fetched (``of``), for synchronous work; the strictest before any fetch."""
        known = self._known.get(network_id)
        return known[1] if known is not None else STRICTEST

    async def _fetch(self, network_id: str) -> Any:
        if self._client is None:
            self._client = peer_client(self.timeout_seconds)
        answer = await get(self._client, f"{self.auth_base}/networks/{network_id}/policy")
        answer.raise_for_status()
        return answer.json()

    async def close(self) -> None:
        await self.renewed()
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
