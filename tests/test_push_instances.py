"""Two share-service instances on one PostgreSQL database: a write accepted by one reaches a WebSocket client of the
other — at once when Redis carries the wake-up, within the poll interval when Redis is away — and nothing is lost
either way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import PostgresDatabases, _migrated, require
from tests.fhir_helpers import create, created_id, observation
from tests.infra import REDIS_URL, LiveServer, free_port, redis_available, settings_for_tests
from tests.test_push_socket import Team, events_until, subscribed, token_of

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def instances(pg_databases: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory, redis_url: str,
              poll_seconds: float) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Instance A and instance B of one deployment: the same databases, key files and public URL (A's, as a load
    balancer's would be), each its own process state, hub and WebSocket clients."""
    data_dir = str(tmp_path_factory.mktemp("instances"))
    port_a, port_b = free_port(), free_port()
    common = {"auth_database_url": pg_databases.create("auth"), "share_database_url": pg_databases.create("share"),
              "redis_url": redis_url, "event_poll_seconds": poll_seconds}
    a_settings = settings_for_tests(data_dir, port_a, **common)
    _migrated(a_settings.resolved_auth_database_url, "auth")
    _migrated(a_settings.resolved_share_database_url, "share")
    a = LiveServer(a_settings, port_a).start()
    b = LiveServer(settings_for_tests(data_dir, port_a, **common), port_b)
    b.base_url = f"http://127.0.0.1:{port_b}"
    b.start()
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def with_redis(pg_databases: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[LiveServer, LiveServer]]:
    require(redis_available(), "Redis")
    # A poll interval far beyond the test's wait: only the Redis wake-up can deliver in time.
    yield from instances(pg_databases, tmp_path_factory, REDIS_URL, poll_seconds=30.0)


@pytest.fixture
def without_redis(pg_databases: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[LiveServer, LiveServer]]:
    # Nothing listens on this port: every wake-up across instances is lost.
    yield from instances(pg_databases, tmp_path_factory, f"redis://127.0.0.1:{free_port()}/0", poll_seconds=0.5)


def deliveries(a: LiveServer, b: LiveServer, count: int, within: float) -> list[float]:
    """A team member on B; ``count`` writes on A, each awaited on B: the seconds each took, commit to receipt."""
    team = Team(a)
    socket = subscribed(b, token_of(team.network, "nurse"))
    took = []
    try:
        for i in range(count):
            posted = time.monotonic()
            created = created_id(create(team.http, team.doctor, observation(team.pid, 36.0 + i / 10)))
            events_until(socket, {("Observation", created)}, timeout=within)
            took.append(time.monotonic() - posted)
    finally:
        socket.close()
    return took


def test_a_write_on_one_instance_reaches_a_client_of_the_other_at_once_through_redis(
        with_redis: tuple[LiveServer, LiveServer]) -> None:
    took = deliveries(*with_redis, count=10, within=5.0)
    assert max(took) < 2.0, took  # far inside the 30 s poll: the wake-up came through Redis


def test_without_redis_the_other_instance_catches_up_from_the_log_within_its_poll(
        without_redis: tuple[LiveServer, LiveServer]) -> None:
    took = deliveries(*without_redis, count=5, within=5.0)
    assert max(took) < 3.0, took
