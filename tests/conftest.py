"""Fixtures: one live server per storage backend (SQLite always; PostgreSQL when reachable, required in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.kit.db import make_engine
from services.kit.migrate import upgrade
from tests.infra import (
    IN_CI,
    LiveServer,
    Network,
    PostgresDatabases,
    free_port,
    make_network,
    postgres_available,
    redis_available,
    settings_for_tests,
)

# Every log line of the run is kept and searched at the end for planted patient strings and secrets.
pytest_plugins = ("tests.planted",)


def require(reason: str | None, what: str) -> None:
    """Skip with a visible reason on a laptop; fail in CI, where the service must be there."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {what} is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    require(postgres_available(), "PostgreSQL")
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test: an SQLite file, then a PostgreSQL database of its own."""
    if request.param == "postgresql":
        databases: PostgresDatabases = request.getfixturevalue("pg_databases")
        return databases.create("fresh")
    return f"sqlite:///{tmp_path / 'test.db'}"


def _migrated(url: str, service: str) -> str:
    engine = make_engine(url)
    upgrade(service, engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    port = free_port()
    overrides = {}
    if request.param == "postgresql":
        databases: PostgresDatabases = request.getfixturevalue("pg_databases")
        overrides = {"auth_database_url": databases.create("auth"), "share_database_url": databases.create("share")}
    settings = settings_for_tests(str(data_dir), port, **overrides)
    _migrated(settings.resolved_auth_database_url, "auth")
    _migrated(settings.resolved_share_database_url, "share")
    live = LiveServer(settings, port).start()
    yield live
    live.stop()


@pytest.fixture
def network(server: LiveServer) -> Network:
    return make_network(server)


@pytest.fixture
def emergency(server: LiveServer) -> Network:
    """A network whose members include an ambulance crew member (profession ems)."""
    return make_network(server, extra_users=[{"role": "crew", "organization": "hospital", "profession": "ems"}])


@pytest.fixture
def http(server: LiveServer) -> httpx.Client:
    """An HTTP client of the live server (posing as its own client address)."""
    return server.client()


@pytest.fixture
def auth(network: Network) -> dict[str, str]:
    """A physician's bearer header in a fresh network: the usual caller of FHIR tests."""
    return network.bearer("physician")


@pytest.fixture
def redis_url() -> str:
    from tests.infra import REDIS_URL

    require(redis_available(), "Redis")
    return REDIS_URL
