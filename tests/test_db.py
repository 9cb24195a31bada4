"""Database plumbing: pooled connections that died while idle are replaced before a request sees them; reads run
without a transaction around them while transactions stay transactions."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from services.kit import db as kit_db
from services.kit.db import Database, make_engine
from services.share.store.statements import statements
from tests.infra import PostgresDatabases


@pytest.fixture
def dead_connection_pool(pg_databases: PostgresDatabases) -> Iterator[Engine]:
    """An engine whose pool holds exactly one connection, whose backend the database has ended."""
    engine = make_engine(pg_databases.create("pool"))
    other = engine.connect()  # checked out first, so the next checkout opens the connection to be killed
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    # The database ends that backend (a restart, a failover, an idle timeout) while it sits in the pool.
    other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    other.commit()
    other.invalidate()  # out of the pool for good: only the dead connection remains there
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_a_connection_killed_while_idle_is_replaced_before_use(dead_connection_pool: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kit_db, "IDLE_PING_SECONDS", 0.0)  # as if it had sat idle past the threshold
    for _ in range(3):  # every pooled connection, the dead one included, answers
        with dead_connection_pool.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.postgres
def test_without_the_idle_ping_the_dead_connection_reaches_the_request(dead_connection_pool: Engine,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The control for the test above: a recently used connection is not pinged, so the kill shows.
    monkeypatch.setattr(kit_db, "IDLE_PING_SECONDS", 3600.0)
    with pytest.raises(DBAPIError), dead_connection_pool.connect() as connection:
        connection.execute(text("SELECT 1"))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    found = Database(database_url)
    with found.transaction() as session:
        session.execute(text("CREATE TABLE notes (body TEXT)"))
    yield found
    found.dispose()


def _count(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM notes")).scalar_one())


def test_reading_runs_each_statement_on_its_own_and_transactions_stay_transactions(database: Database) -> None:
    with database.reading() as session:
        session.execute(text("INSERT INTO notes VALUES ('kept at once')"))
        assert _count(database) == 1  # seen from another connection before the block ends: no transaction held
    # The pooled connection goes back to transactional use: a rolled-back write leaves nothing.
    with pytest.raises(RuntimeError), database.transaction() as session:
        session.execute(text("INSERT INTO notes VALUES ('rolled back')"))
        raise RuntimeError("fails after writing")
    assert _count(database) == 1


def test_a_requests_session_is_freed_without_the_cycle_collector(database: Database) -> None:
    """What a request keeps in ``session.info`` refers back to the session (the statements' driver connection with
    its transaction, a callback closing over it). Left there, every session became cyclic garbage, and collecting
    it paused the whole process for tens of milliseconds every few seconds."""
    gc.collect()
    gc.disable()  # what is freed below is freed by reference counting alone
    try:
        for session_of in (database.transaction, database.reading):
            with session_of() as session:
                statements(session).rows(session, "SELECT count(*) FROM notes", ())  # caches the driver connection
                session.info["callback"] = _closing_over(session)  # as AUDIT_WITH_WRITE does
                freed = weakref.ref(session)
            del session
            assert freed() is None, session_of.__name__
    finally:
        gc.enable()


def _closing_over(session: Session) -> Callable[[], Session]:
    return lambda: session


@pytest.mark.postgres
def test_only_readers_keep_generic_plans(pg_databases: PostgresDatabases) -> None:
    database = Database(pg_databases.create("plans"))
    try:
        with database.reading() as session:
            assert session.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_generic_plan"
        with database.transaction() as session:
            assert session.execute(text("SHOW plan_cache_mode")).scalar_one() == "auto"
    finally:
        database.dispose()
