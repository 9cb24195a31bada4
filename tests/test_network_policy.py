"""Each network's sharing policy: published by the identity service, read over real HTTP by the share service,
remembered for a short while, and the strictest policy when it cannot be had."""

from __future__ import annotations

import asyncio

from services.share.access.policy import STRICTEST, NetworkPolicies, NetworkPolicy
from tests.infra import LiveServer, Network, free_port


def policy_of(policies: NetworkPolicies, network_id: str) -> NetworkPolicy:
    async def ask() -> NetworkPolicy:
        try:
            return await policies.of(network_id)
        finally:
            await policies.close()
    return asyncio.run(ask())


def test_the_policy_is_published_and_follows_the_settings(server: LiveServer, network: Network) -> None:
    http = server.client()
    assert http.get(f"/auth/networks/{network.id}/policy").json() == {
        "network": network.id, "consent_required": True, "team_join_approvals": ["invitee", "organization"],
        "emergency_review_days": 90}
    admin = {"Authorization": f"Bearer {network.login('admin')['access_token']}"}
    changed = http.patch("/auth/admin/network/settings", headers=admin,
                         json={"consent_required": False, "team_join_approvals": []})
    assert changed.status_code == 200, changed.text
    assert http.get(f"/auth/networks/{network.id}/policy").json()["team_join_approvals"] == []
    assert http.patch("/auth/admin/network/settings", headers=admin, json={"emergency_review_days": 30}).status_code \
        == 200
    assert http.get(f"/auth/networks/{network.id}/policy").json()["emergency_review_days"] == 30
    assert http.get("/auth/networks/no-such-network/policy").status_code == 404


def test_the_share_service_reads_it_over_http_and_remembers_it(server: LiveServer, network: Network) -> None:
    auth_url = f"{server.base_url}/auth"
    remembered = NetworkPolicies(auth_url, ttl_seconds=300)
    first = policy_of(remembered, network.id)
    assert first == NetworkPolicy(consent_required=True, team_join_approvals=("invitee", "organization"))
    admin = {"Authorization": f"Bearer {network.login('admin')['access_token']}"}
    server.client().patch("/auth/admin/network/settings", headers=admin, json={"consent_required": False})

    async def twice() -> tuple[NetworkPolicy, NetworkPolicy]:
        fresh = NetworkPolicies(auth_url, ttl_seconds=0)
        try:
            return await remembered.of(network.id), await fresh.of(network.id)
        finally:
            await fresh.close()
            await remembered.close()

    cached, fresh = asyncio.run(twice())
    assert cached.consent_required and not fresh.consent_required  # within its time, the answer it had


def test_without_the_identity_service_the_strictest_policy_applies(server: LiveServer, network: Network) -> None:
    nowhere = NetworkPolicies(f"http://127.0.0.1:{free_port()}/auth", ttl_seconds=0, timeout_seconds=1)
    assert policy_of(nowhere, network.id) == STRICTEST
    assert policy_of(NetworkPolicies(f"{server.base_url}/auth"), "no-such-network") == STRICTEST

    async def known_then_unreachable() -> NetworkPolicy:
        policies = NetworkPolicies(f"{server.base_url}/auth", ttl_seconds=0)
        try:
            await policies.of(network.id)
            policies.auth_base = f"http://127.0.0.1:{free_port()}/auth"
            return await policies.of(network.id)
        finally:
            await policies.close()

    assert asyncio.run(known_then_unreachable()).team_join_approvals == ("invitee", "organization")  # last known


def test_the_share_context_asks_the_deployments_own_identity_service(server: LiveServer, network: Network) -> None:
    assert server.app.state.share.policies.auth_base == f"{server.settings.public_url}/auth"


def test_a_known_policy_past_its_time_is_answered_at_once_and_renewed_behind_it(
        server: LiveServer, network: Network) -> None:
    """Only a network's first request waits for the identity service: later ones take the policy known, and one
    background fetch renews it when it is old (every request waiting on that fetch stalled them all together)."""
    admin = {"Authorization": f"Bearer {network.login('admin')['access_token']}"}

    async def scenario() -> tuple[int, int, int, int]:
        policies = NetworkPolicies(f"{server.base_url}/auth", ttl_seconds=0)
        try:
            first = await policies.of(network.id)
            changed = await asyncio.to_thread(server.client().patch, "/auth/admin/network/settings",
                                              headers=admin, json={"emergency_review_days": 45})
            assert changed.status_code == 200, changed.text
            answered = await policies.of(network.id)  # old: answered with, and a renewal starts
            again = await policies.of(network.id)  # the renewal under way: no second one
            await policies.renewed()
            return (first.emergency_review_days, answered.emergency_review_days, again.emergency_review_days,
                    (await policies.of(network.id)).emergency_review_days)
        finally:
            await policies.close()

    assert asyncio.run(scenario()) == (90, 90, 90, 45)
