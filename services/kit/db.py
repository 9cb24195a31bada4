"""Database plumbing shared by both services: engines, the declarative base, the request transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from services.kit.errors import RenkeiError

# Stable constraint names, so Alembic autogenerate and hand-written migrations agree on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str, *, reader: bool = False) -> Engine:
    """An engine for ``url``; ``reader``: for work that needs no transaction around it (Database.reading)."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if reader else {}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A reader's statements are looked up by key (a resource, one patient's resources): one plan fits every
    # value, so PostgreSQL keeps a prepared statement's generic plan instead of planning each execution anew.
    connect_args: dict[str, Any] = {"options": "-c plan_cache_mode=force_generic_plan"} if reader else {}
    # A database host that does not answer at all (a network partition, a failover in progress) would otherwise
    # hold each request for the operating system's TCP timeout (about two minutes): give up after a few seconds,
    # and the request is answered 503 (services/app.py). A connect_timeout in the URL takes precedence.
    if "connect_timeout" not in make_url(url).query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args=connect_args, **options)
    _ping_idle_connections(engine)
    return engine


# Seconds a new PostgreSQL connection may take before the attempt fails (libpq's connect_timeout).
CONNECT_TIMEOUT_SECONDS = 5

# Session.info entry marking a session of Database.reading(): no transaction around its statements.
READER = "renkei.db.reader"


class TransactionRequired(Exception):
    """Work begun without a transaction (Database.reading) found it must write more than one statement, which
    must commit together: the caller runs it again in a transaction (Database.transaction)."""


def without_transaction(session: Session) -> bool:
    return bool(session.info.get(READER))

# A pooled connection that sat unused this long is pinged before use; one in steady use is not.
IDLE_PING_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip per request.

    ``pool_pre_ping`` pings on every checkout: a whole extra round trip on every request, measured at about a tenth
    of a read's time. A connection that was used a moment ago is very unlikely to be dead, and if the database
    restarts under load the failing request invalidates the whole pool anyway; connections that sat idle (the
    night after a database restart, say) are pinged and replaced before any request sees them.
    """

    @event.listens_for(engine, "checkin")
    def _remember_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < IDLE_PING_SECONDS:
            return  # just opened, or in steady use
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()  # leave no transaction open behind the ping
        except Exception as error:  # any failure means this connection is unusable
            # The pool discards this connection and checks out (or opens) another one.
            raise DisconnectionError(f"pooled connection is dead: {type(error).__name__}") from error


def _close(session: Session) -> None:
    """Close a request's session and empty its ``info``. What the request kept there refers back to the session
    (the driver connection's transaction, an audit callback closing over it), which made every request's session,
    with its connection wrapper, listeners and whatever else it held, garbage in reference cycles: freed only by the
    cycle collector, whose collections then took 15-45 ms each, every few seconds, with the GIL held — every
    request in flight in that process waited (bench/sheets.py's p99 at 300 sheets a second). Emptied, the session
    is freed as soon as the request lets go of it."""
    session.close()
    session.info.clear()


class Database:
    """An engine and its session factory; one per service."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # A pool of its own (reading()); it connects only when first used.
        self.reader_engine = make_engine(url, reader=True)
        self._readers = sessionmaker(self.reader_engine, expire_on_commit=False, info={READER: True})

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error (unless the error must keep its writes)."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except RenkeiError as error:
            if error.keep_writes:
                session.commit()
            else:
                session.rollback()
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            _close(session)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Read-only work without a transaction around it: each statement commits by itself.

        Under READ COMMITTED (the services' isolation) every statement takes a snapshot of its own inside a
        transaction too, so a read that runs one statement, or several independent ones, sees exactly what it would
        in a transaction, and saves the BEGIN and COMMIT round trips: a third of a single read's database work.
        Anything written here (the audit of a refused read) is kept at once, so the only writes that belong here
        are single statements (a create whose data key exists: ``single_statement_writes``); work that finds it
        must write more raises TransactionRequired. For keyed lookups only: on PostgreSQL these sessions keep
        generic plans (make_engine), which a search by arbitrary values should not.
        """
        session = self._readers()
        try:
            yield session
        finally:
            _close(session)

    @property
    def single_statement_writes(self) -> bool:
        """Whether the share store writes a new version in one statement (PostgreSQL: statements.py), so that
        a create may run in reading() and save the BEGIN and COMMIT round trips."""
        return self.engine.dialect.name == "postgresql"

    def dispose(self) -> None:
        self.engine.dispose()
        self.reader_engine.dispose()
