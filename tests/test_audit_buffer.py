"""The audit records of reads, written in the background (services/share/audit/buffer.py), on PostgreSQL: rows
reach the table in the order they were added; a failed write keeps them for the next pass; a full queue refuses
reads rather than serve them unrecorded; shutdown writes what is left; and a live server's reads are all recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from structlog.testing import capture_logs

from services.kit.db import Database, make_engine
from services.kit.migrate import upgrade
from services.share.audit.buffer import AuditBuffer, AuditUnavailable, flush_forever
from services.share.audit.models import AuditEntry
from services.share.audit.trail import Access, AuditRow, AuditTrail
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.keyring import KeyRing
from services.share.store.models import ResourceVersion
from tests.conftest import _migrated
from tests.fhir_helpers import create, created_id, observation, patient, response
from tests.infra import LiveServer, PostgresDatabases, free_port, settings_for_tests
from tests.test_access_rules import open_network
from tests.test_share_crypto import key_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(pg_databases: PostgresDatabases) -> Iterator[Database]:
    url = pg_databases.create("buffer")
    engine = make_engine(url)
    upgrade("share", engine)
    engine.dispose()
    database = Database(url)
    yield database
    database.dispose()


def rows(database: Database, tmp_path: Path, count: int, start: int = 0) -> list[AuditRow]:
    trail = AuditTrail(DataKeys(KeyRing.load(key_settings(tmp_path))))
    base = datetime(2026, 12, 1, tzinfo=UTC)
    with database.transaction() as db:  # the network's audit key is made on first use, in a transaction
        return [trail.row(db, Access("net-a", "user-1", f"patient-{n}", "R", "0"), {"n": n},
                          recorded=base + timedelta(seconds=n)) for n in range(start, start + count)]


def stored(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(AuditEntry.patient_id).order_by(AuditEntry.seq)))


def test_rows_are_written_in_the_order_added(database: Database, tmp_path: Path) -> None:
    buffer = AuditBuffer(database)
    buffer.add(rows(database, tmp_path, 3))
    buffer.add(rows(database, tmp_path, 2, start=3))
    assert buffer.pending == 5
    assert buffer.flush() == 5 and buffer.pending == 0
    assert stored(database.engine) == [f"patient-{n}" for n in range(5)]
    assert buffer.flush() == 0


def test_a_failed_write_keeps_the_rows_for_the_next_pass(database: Database, tmp_path: Path) -> None:
    buffer = AuditBuffer(database)
    buffer.add(rows(database, tmp_path, 3))
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    with pytest.raises(Exception, match="audit_log"):
        buffer.flush()
    buffer.add(rows(database, tmp_path, 1, start=3))  # added while the table was away: still after the others
    assert buffer.pending == 4
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    assert buffer.flush() == 4
    assert stored(database.engine) == [f"patient-{n}" for n in range(4)]


def test_a_full_queue_refuses_rather_than_drops(database: Database, tmp_path: Path) -> None:
    buffer = AuditBuffer(database, max_pending=3)
    buffer.add(rows(database, tmp_path, 3))
    with pytest.raises(AuditUnavailable) as refused:
        buffer.add(rows(database, tmp_path, 1, start=3))
    assert refused.value.status_code == 503
    assert buffer.pending == 3


@contextlib.contextmanager
def live_server(pg_databases: PostgresDatabases, tmp_path: Path,
                **settings: Any) -> Iterator[tuple[LiveServer, Engine]]:
    """A live server on PostgreSQL databases of its own, and an engine on its share database."""
    share_url = pg_databases.create("buffer-live")
    port = free_port()
    configured = settings_for_tests(str(tmp_path), port, share_database_url=share_url,
                                    auth_database_url=pg_databases.create("buffer-auth"), **settings)
    _migrated(configured.resolved_auth_database_url, "auth")
    _migrated(share_url, "share")
    server = LiveServer(configured, port).start()
    engine = make_engine(share_url)
    try:
        yield server, engine
    finally:
        server.stop()
        engine.dispose()


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)


def test_a_live_server_records_every_read_and_writes_the_rest_at_shutdown(
        pg_databases: PostgresDatabases, tmp_path: Path) -> None:
    with live_server(pg_databases, tmp_path, audit_flush_seconds=5.0) as (server, engine):  # written at shutdown
        network = open_network(server)
        http, doctor = server.client(), network.bearer("physician")
        pid = created_id(create(http, doctor, patient()))
        created_id(create(http, doctor, response(pid)))
        before = count(engine, AuditEntry)
        for _ in range(5):
            assert http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=doctor).status_code == 200
        time.sleep(0.2)
        assert count(engine, AuditEntry) == before  # the reads' records wait in the worker
        server.stop()
        assert count(engine, AuditEntry) - before == 5


def test_a_create_in_one_statement_writes_its_record_in_it_too(pg_databases: PostgresDatabases,
                                                               tmp_path: Path) -> None:
    with live_server(pg_databases, tmp_path) as (server, engine):
        network = open_network(server)
        http, doctor = server.client(), network.bearer("physician")
        pid = created_id(create(http, doctor, patient()))
        created_id(create(http, doctor, observation(pid)))  # the patient's data key exists from here on
        records, versions = count(engine, AuditEntry), count(engine, ResourceVersion)
        created_id(create(http, doctor, observation(pid)))  # one statement: the version and its record
        assert (count(engine, AuditEntry), count(engine, ResourceVersion)) == (records + 1, versions + 1)
        with engine.begin() as connection:  # the record cannot be written: nor is the observation
            connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
        try:
            assert create(http, doctor, observation(pid)).status_code >= 500
            assert count(engine, ResourceVersion) == versions + 1
        finally:
            with engine.begin() as connection:
                connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))


def test_the_background_writer_keeps_rows_while_the_database_refuses_and_says_so_once(
        database: Database, tmp_path: Path) -> None:
    buffer = AuditBuffer(database)
    buffer.add(rows(database, tmp_path, 2))
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))

    async def scenario() -> list[dict[str, object]]:
        with capture_logs() as logged:
            writer = asyncio.create_task(flush_forever(buffer, 0.01, asyncio.to_thread))
            await asyncio.sleep(0.3)  # many passes, all refused
            assert buffer.pending == 2
            with database.engine.begin() as connection:
                connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
            for _ in range(100):
                await asyncio.sleep(0.02)
                if not buffer.pending:
                    break
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return logged

    logged = asyncio.run(scenario())
    assert buffer.pending == 0 and stored(database.engine) == ["patient-0", "patient-1"]
    events = [entry["event"] for entry in logged]
    assert events == ["audit_flush_failed", "audit_flush_recovered"]
    assert logged[0]["pending"] == 2 and "audit_log" not in str(logged[0])  # the error by its type only


def test_a_row_the_database_refuses_is_dropped_without_holding_back_the_rest(
        database: Database, tmp_path: Path) -> None:
    buffer = AuditBuffer(database)
    good = rows(database, tmp_path, 3)
    poison = good[1]._replace(patient_id="p" * 65)  # longer than the column takes
    buffer.add([good[0], poison, good[2]])
    with capture_logs() as logged:
        assert buffer.flush() == 3
    assert buffer.pending == 0
    assert stored(database.engine) == ["patient-0", "patient-2"]
    assert [entry["event"] for entry in logged] == ["audit_row_refused"]
