"""Protective limits against a live server configured with low ones: rates (429 + Retry-After, per user and per
address, shared through Redis), body size (413 while streaming), CORS, and who may read /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.kit.db import make_engine
from services.kit.limits import Limiter
from services.kit.migrate import upgrade
from tests.fhir_helpers import FHIR_JSON
from tests.infra import LiveServer, Network, fake_address, free_port, make_network, settings_for_tests

TABLET = "https://tablet.example.jp"
BURST = 5
LIMITS: dict[str, Any] = {
    "rate_limit_per_second": 0.2, "rate_limit_burst": BURST,  # one request back every five seconds
    "rate_limit_address_per_second": 0.2, "rate_limit_address_burst": BURST,
    "max_body_bytes": 4096, "max_fhir_body_bytes": 64 * 1024,
    "metrics_allow": ["192.0.2.0/24"], "allowed_origins": [TABLET], "access_log": False,
}


def start_server(directory: Path, **overrides: Any) -> LiveServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = settings_for_tests(str(directory), port, **overrides)
    for service, url in (("auth", settings.resolved_auth_database_url),
                         ("share", settings.resolved_share_database_url)):
        engine = make_engine(url)
        upgrade(service, engine)
        engine.dispose()
    return LiveServer(settings, port).start()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("limited"), **LIMITS)
    yield live
    live.stop()


@pytest.fixture
def team(limited: LiveServer) -> Network:
    return make_network(limited)


def _until_refused(send: Any, most: int) -> tuple[int, httpx.Response]:
    """Send until a 429; how many were served, and the refusal."""
    for served in range(most):
        answer = send()
        if answer.status_code == 429:
            return served, answer
        assert answer.status_code < 400, answer.text
    raise AssertionError(f"no 429 after {most} requests")


def _retry_after(answer: httpx.Response, most: int = 10) -> int:
    value = int(answer.headers["retry-after"])
    assert 1 <= value <= most
    return value


# Rates --------------------------------------------------------------------------------------------------------


def test_each_user_has_a_bucket_of_their_own(limited: LiveServer, team: Network) -> None:
    physician, nurse = team.bearer("physician"), team.bearer("nurse")
    # From a new address each time: the limit follows the user, not the address.
    served, refused = _until_refused(lambda: limited.client().get("/fhir/Patient", headers=physician), BURST + 3)
    assert BURST <= served <= BURST + 1  # counted after each answer: at most one more than the burst gets through
    _retry_after(refused)
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert refused.json()["issue"][0]["code"] == "throttled"
    assert refused.headers["x-request-id"]  # refusals pass through the request-id middleware too
    assert limited.client().get("/fhir/Patient", headers=nurse).status_code == 200  # someone else is not limited


def test_a_forged_token_spends_its_senders_allowance_not_the_named_users(limited: LiveServer, team: Network) -> None:
    victim = team.user("care_manager")["id"]
    claims = base64.urlsafe_b64encode(json.dumps({"sub": victim}).encode()).decode().rstrip("=")
    forged = {"Authorization": f"Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6Ingif.{claims}.c2ln"}
    attacker = limited.client()
    statuses = [attacker.get("/fhir/Patient", headers=forged).status_code for _ in range(BURST + 3)]
    assert statuses[:BURST] == [401] * BURST and statuses[-1] == 429
    assert limited.client().get("/fhir/Patient", headers=team.bearer("care_manager")).status_code == 200


def test_requests_without_a_token_are_limited_per_address(limited: LiveServer) -> None:
    one, other = limited.client(), limited.client()
    served, refused = _until_refused(lambda: one.get("/fhir/metadata"), BURST + 2)
    assert served == BURST
    _retry_after(refused)
    assert refused.json()["resourceType"] == "OperationOutcome"
    # Outside /fhir the refusal is OAuth-style.
    oauth = one.get("/auth/jwks.json")
    assert oauth.status_code == 429 and oauth.json()["error"] == "too_many_requests"
    _retry_after(oauth)
    assert other.get("/fhir/metadata").status_code == 200
    # This machine (health probes, the CLI) is not limited.
    local = httpx.Client(base_url=limited.base_url)
    assert all(local.get("/healthz").status_code == 200 for _ in range(BURST + 2))


def test_redis_shares_the_limits_between_instances(tmp_path: Path, redis_url: str) -> None:
    first = start_server(tmp_path / "one", **LIMITS, redis_url=redis_url)
    second = start_server(tmp_path / "two", **LIMITS, redis_url=redis_url)
    try:
        address = fake_address()
        for _ in range(BURST):
            assert first.client(address).get("/healthz").status_code == 200
        # Alone, the second instance would serve this address BURST more; shared, it refuses once the counts meet
        # (each instance adds its own every 0.1 s).
        statuses = []
        for _ in range(BURST - 2):
            time.sleep(0.3)
            answer = second.client(address).get("/healthz")
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                _retry_after(answer, most=BURST * 5)  # shared counts are fixed windows of burst/rate seconds
                break
        assert statuses[-1] == 429, statuses
        assert second.client().get("/healthz").status_code == 200  # another address
    finally:
        first.stop()
        second.stop()


def test_without_redis_each_process_keeps_its_own_limits() -> None:
    import redis.asyncio as aioredis
    from structlog.testing import capture_logs

    unreachable = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    limiter = Limiter("address", rate=0.1, burst=2, redis=unreachable, flush_seconds=0.01)
    key = uuid.uuid4().hex

    async def charges() -> list[float]:
        waits = [limiter.charge(key, time.monotonic()) for _ in range(2)]
        await asyncio.sleep(0.5)  # the shared counts' flush fails meanwhile
        limiter.charge(uuid.uuid4().hex, time.monotonic())  # Redis is left alone for a while: nothing to flush
        await asyncio.sleep(0.1)
        return [*waits, limiter.charge(key, time.monotonic())]

    with capture_logs() as logged:
        waits = asyncio.run(charges())
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0
    assert limiter.refused(key, time.monotonic()) > 0
    assert [entry["event"] for entry in logged] == ["rate_limit_redis_unavailable"]


# Body size ----------------------------------------------------------------------------------------------------


def _chunks(total: int, piece: int = 8192) -> Iterator[bytes]:
    """A body sent chunked, with no Content-Length: the limit has to be counted as it streams."""
    yield b'{"resourceType": "Patient", "id": "'
    sent = 0
    while sent < total:
        yield b"x" * piece
        sent += piece
    yield b'"}'


def test_an_oversize_streamed_body_is_refused_with_413(limited: LiveServer, team: Network) -> None:
    auth = team.bearer("physician")
    http = limited.client()
    fits = http.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "小"}]},
                     headers={**auth, **FHIR_JSON})
    assert fits.status_code == 201, fits.text
    too_large = http.post("/fhir/Patient", content=_chunks(80 * 1024), headers={**auth, **FHIR_JSON})
    assert too_large.status_code == 413, too_large.text
    outcome = too_large.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "65536 bytes" in outcome["issue"][0]["diagnostics"]
    # Outside /fhir: the identity service's smaller limit, OAuth-style; a declared length is refused unread.
    json_body = {"Content-Type": "application/json"}
    login = limited.client().post("/auth/login", content=_chunks(8 * 1024), headers=json_body)
    assert login.status_code == 413 and login.json()["error"] == "too_large"
    declared = limited.client().post("/auth/login", content=b"{" + b" " * 5000 + b"}", headers=json_body)
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"


# CORS and /metrics ---------------------------------------------------------------------------------------------


def test_cors_preflight_from_the_tablet_origin_only(limited: LiveServer) -> None:
    http = httpx.Client(base_url=limited.base_url)
    ask = {"Access-Control-Request-Method": "PUT",
           "Access-Control-Request-Headers": "authorization, content-type, if-match, x-request-id"}
    allowed = http.options("/fhir/Patient/p1", headers={"Origin": TABLET, **ask})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == TABLET
    assert "PUT" in allowed.headers["access-control-allow-methods"]
    assert "if-match" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    refused = http.options("/fhir/Patient/p1", headers={"Origin": "https://elsewhere.example", **ask})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = http.get("/fhir/metadata", headers={"Origin": TABLET})
    assert simple.headers["access-control-allow-origin"] == TABLET
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert all(name in exposed for name in ("etag", "location", "retry-after", "x-request-id"))
    assert "access-control-allow-origin" not in http.get("/fhir/metadata", headers={"Origin": "https://x.example"}).headers


def test_metrics_follow_the_allowed_networks(limited: LiveServer) -> None:
    assert httpx.Client(base_url=limited.base_url).get("/metrics").status_code == 404  # loopback is not listed
    inside = limited.client("192.0.2.7").get("/metrics")
    assert inside.status_code == 200 and "renkei_http_request_duration_seconds" in inside.text
    assert limited.client("198.51.100.7").get("/metrics").status_code == 404
