"""The audit log's hash chain on SQLite and PostgreSQL: an intact log verifies; a row altered, deleted, moved,
cut off the end or slipped into the past is found, at the first broken link; PostgreSQL itself refuses changes.

Tampering goes around the application on purpose, as someone with database access would (on PostgreSQL with the
append-only trigger switched off for the session, as only a superuser can).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Executable, delete, exists, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from services.kit.db import make_engine
from services.kit.migrate import upgrade
from services.share.audit.chain import _ENTRY_COLUMNS, GENESIS, Verdict, chain_pending, link, verify
from services.share.audit.models import AuditChainHead, AuditEntry, AuditLink
from services.share.audit.trail import Access, AuditTrail
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.envelope import TamperedCiphertext
from services.share.crypto.keyring import KeyRing
from tests.infra import LiveServer, PostgresDatabases
from tests.test_share_crypto import key_settings

ROWS = 12


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade("share", engine)  # the migrations, so PostgreSQL's append-only trigger is there too
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    return AuditTrail(DataKeys(KeyRing.load(key_settings(tmp_path))))


def event(n: int) -> dict[str, object]:
    return {"resourceType": "AuditEvent", "action": "R", "outcome": "0", "entity": [{"what": {"reference": f"x/{n}"}}]}


def write(sessions: sessionmaker[Session], trail: AuditTrail, count: int = ROWS, network: str = "net-a") -> None:
    for n in range(count):
        with sessions() as db:
            trail.record(db, Access(network, f"user-{n % 3}", f"patient-{n % 4}", "R", "0"), event(n))
            db.commit()


def chain(sessions: sessionmaker[Session], **options: object) -> int:
    with sessions() as db:
        linked = chain_pending(db, **options)  # type: ignore[arg-type]
        db.commit()
    return linked


def verdict(sessions: sessionmaker[Session]) -> Verdict:
    with sessions() as db:
        return verify(db)


def tamper(engine: Engine, *statements: Executable) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL session_replication_role = replica"))  # triggers off
        for statement in statements:
            connection.execute(statement)


def renumber(seq: int, to: int) -> Executable:
    return update(AuditEntry).where(AuditEntry.seq == seq).values(seq=to)


@pytest.fixture
def chained(sessions: sessionmaker[Session], trail: AuditTrail) -> list[int]:
    write(sessions, trail)
    assert chain(sessions) == ROWS
    with sessions() as db:
        return list(db.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)))


def test_an_intact_log_verifies(sessions: sessionmaker[Session], trail: AuditTrail, chained: list[int]) -> None:
    found = verdict(sessions)
    assert found.intact, found.problem
    assert (found.checked, found.pending, found.head_seq) == (ROWS, 0, chained[-1])
    write(sessions, trail, 3)  # the chain goes on from its head
    assert verdict(sessions).pending == 3
    assert chain(sessions) == 3
    again = verdict(sessions)
    assert again.intact and again.checked == ROWS + 3 and again.head_digest != found.head_digest


@pytest.mark.parametrize("column", ["agent", "patient_id", "outcome", "event", "recorded"])
def test_an_altered_row_is_found(engine: Engine, sessions: sessionmaker[Session], chained: list[int],
                                 column: str) -> None:
    target = chained[5]
    with sessions() as db:
        row = db.get(AuditEntry, target)
        assert row is not None
    changed = {"agent": "someone-else", "patient_id": "patient-9", "outcome": "4", "event": row.event + b"!",
               "recorded": row.recorded - timedelta(hours=1)}[column]
    tamper(engine, update(AuditEntry).where(AuditEntry.seq == target).values({column: changed}))
    found = verdict(sessions)
    assert not found.intact and found.seq == target and "altered" in (found.problem or "")
    assert found.checked == 5


def test_a_deleted_row_is_found(engine: Engine, sessions: sessionmaker[Session], chained: list[int]) -> None:
    tamper(engine, delete(AuditEntry).where(AuditEntry.seq == chained[4]))
    found = verdict(sessions)
    assert not found.intact and found.seq == chained[5] and "deleted or moved" in (found.problem or "")


def test_reordered_rows_are_found(engine: Engine, sessions: sessionmaker[Session], chained: list[int]) -> None:
    first, second = chained[3], chained[4]
    tamper(engine, renumber(first, -1), renumber(second, first), renumber(-1, second))
    found = verdict(sessions)
    assert not found.intact and found.seq == first


def test_rows_cut_off_the_end_are_found(engine: Engine, sessions: sessionmaker[Session], chained: list[int]) -> None:
    tamper(engine, delete(AuditEntry).where(AuditEntry.seq >= chained[-2]))
    found = verdict(sessions)
    assert not found.intact and "removed from its end" in (found.problem or "")


def test_a_row_slipped_into_the_past_is_found(engine: Engine, sessions: sessionmaker[Session],
                                              trail: AuditTrail, chained: list[int]) -> None:
    with sessions() as db:
        trail.record(db, Access("net-a", "intruder", "patient-1", "R", "0"), event(99))
        db.commit()
        forged = db.scalars(select(AuditEntry).where(AuditEntry.agent == "intruder")).one()
    tamper(engine, renumber(forged.seq, 0))
    found = verdict(sessions)
    assert not found.intact and found.seq == 0 and "behind the chain's head" in (found.problem or "")


def test_the_chainer_waits_at_a_gap_until_it_settles(engine: Engine, sessions: sessionmaker[Session],
                                                      trail: AuditTrail, chained: list[int]) -> None:
    write(sessions, trail, 2)
    with sessions() as db:
        late = list(db.scalars(select(AuditEntry).where(AuditEntry.seq > chained[-1]).order_by(AuditEntry.seq)))
    # A gap before the last row, as a transaction still open (or rolled back) leaves one.
    tamper(engine, renumber(late[-1].seq, late[-1].seq + 5))
    assert chain(sessions) == 1  # up to the gap: its seq may still commit
    assert chain(sessions, now=datetime.now(UTC) + timedelta(minutes=5)) == 1  # long settled: rolled back
    found = verdict(sessions)
    assert found.intact and found.checked == ROWS + 2


def test_each_event_is_sealed_to_its_row(sessions: sessionmaker[Session], trail: AuditTrail,
                                         chained: list[int]) -> None:
    with sessions() as db:
        first, second = (db.get(AuditEntry, seq) for seq in chained[:2])
        assert first is not None and second is not None
        assert trail.event(db, first) == event(0)
        assert b"x/0" not in first.event  # sealed, not plain JSON
        first.event = second.event  # a body moved to another row does not open there
        with pytest.raises(TamperedCiphertext):
            trail.event(db, first)
        db.rollback()


@pytest.mark.postgres
def test_postgresql_refuses_any_change_to_the_log_or_its_chain(pg_databases: PostgresDatabases,
                                                               tmp_path: Path) -> None:
    engine = make_engine(pg_databases.create("audit_trigger"))
    upgrade("share", engine)
    sessions = sessionmaker(engine)
    write(sessions, AuditTrail(DataKeys(KeyRing.load(key_settings(tmp_path)))), 3)
    assert chain(sessions, settle_seconds=0) == 3
    for statement in ("UPDATE audit_log SET agent = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                      "UPDATE audit_chain SET digest = '\\x01'", "DELETE FROM audit_chain", "TRUNCATE audit_chain"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    assert verdict(sessions).intact
    engine.dispose()


def test_networks_share_one_chain(sessions: sessionmaker[Session], trail: AuditTrail) -> None:
    for network in ("net-a", f"net-{uuid.uuid4().hex[:6]}"):
        write(sessions, trail, 3, network)
    assert chain(sessions) == 6
    assert verdict(sessions).intact


def test_the_verify_command_reports_an_intact_chain_and_then_the_first_broken_link(tmp_path: Path) -> None:
    from services.cli import migrate_all
    from services.kit.settings import Settings
    from services.share.context import ShareContext
    from tests.test_cli import run

    settings = Settings(data_dir=tmp_path / "data")
    migrate_all(settings)
    ctx = ShareContext.build(settings)
    write(ctx.db.sessions, AuditTrail(ctx.store.keys), 5)
    chain(ctx.db.sessions)
    ctx.db.dispose()
    intact = run(["audit", "verify"], tmp_path / "data")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "5 chained audit record(s) checked" in intact.stdout and "intact" in intact.stdout
    anchor = next(line.split()[-1] for line in intact.stdout.splitlines() if line.startswith("anchor to keep"))
    assert run(["audit", "verify", "--anchor", anchor], tmp_path / "data").returncode == 0
    narrow = run(["audit", "verify"], tmp_path / "data", COLUMNS="40")  # as on a pipe: rich takes 80 columns or less
    assert f"anchor to keep: {anchor}\n" in narrow.stdout, narrow.stdout
    assert run(["audit", "verify", "--anchor", "5:nonsense"], tmp_path / "data").returncode == 1
    tamper(ctx.db.engine, delete(AuditEntry).where(AuditEntry.seq == 2))
    broken = run(["audit", "verify"], tmp_path / "data")
    assert broken.returncode == 1 and "broken at record 3" in broken.stdout


def test_the_service_chains_what_is_appended_in_the_background(server: LiveServer) -> None:
    ctx = server.app.state.share
    network = f"net-{uuid.uuid4().hex[:6]}"
    write(ctx.db.sessions, AuditTrail(ctx.store.keys), 4, network)
    deadline = time.monotonic() + 20  # the chainer runs every audit_chain_interval_seconds (0.5 s by default)
    while True:
        with ctx.db.sessions() as db:
            unchained = db.scalar(select(func.count()).select_from(AuditEntry)
                                  .where(AuditEntry.network_id == network,
                                         ~exists().where(AuditLink.seq == AuditEntry.seq)))
            found = verify(db)
        if unchained == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert unchained == 0 and found.intact, found.problem


def test_a_log_rewritten_whole_no_longer_matches_its_anchors(engine: Engine, sessions: sessionmaker[Session],
                                                             chained: list[int]) -> None:
    kept = verdict(sessions)
    anchors = {kept.head_seq: kept.head_digest}
    with sessions() as db:
        assert verify(db, anchors=anchors).intact
    # Someone with the database to themselves alters a row and recomputes every digest and the head.
    tamper(engine, update(AuditEntry).where(AuditEntry.seq == chained[2]).values(agent="someone-else"),
           delete(AuditLink), delete(AuditChainHead))
    assert chain(sessions) == ROWS
    assert verdict(sessions).intact  # self-consistent again …
    with sessions() as db:
        found = verify(db, anchors=anchors)
    assert not found.intact and found.seq == kept.head_seq and "rewritten" in (found.problem or "")
    with sessions() as db:
        assert "no longer in the chain" in (verify(db, anchors={10_000: "00" * 32}).problem or "")


def test_a_log_chained_before_migration_0009_still_verifies_after_it(database_url: str, tmp_path: Path) -> None:
    """Migration 0009 moves the links out of the log rows into audit_chain; the chain they form is unchanged."""
    engine = make_engine(database_url)
    upgrade("share", engine, "0008")
    trail = AuditTrail(DataKeys(KeyRing.load(key_settings(tmp_path))))
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as db:  # rows as the earlier schema held them, chained in place as its chainer did
        previous_seq, previous_digest = 0, GENESIS
        for n in range(4):
            row = trail.row(db, Access("net-a", f"user-{n}", f"patient-{n}", "R", "0"), event(n))
            seq = db.execute(text("INSERT INTO audit_log (network_id, recorded, agent, patient_id, action, outcome,"
                                  " data_key_id, event) VALUES (:n, :r, :a, :p, :ac, :o, :k, :e) RETURNING seq"),
                             {"n": row.network_id, "r": row.recorded, "a": row.agent, "p": row.patient_id,
                              "ac": row.action, "o": row.outcome, "k": row.data_key_id, "e": row.event}).scalar_one()
            stored = db.execute(select(*(AuditEntry.__table__.c[name] for name in _ENTRY_COLUMNS))
                                .where(AuditEntry.__table__.c.seq == seq)).one()
            digest = link(previous_digest, previous_seq, stored)
            db.execute(text("UPDATE audit_log SET prev_seq = :p, digest = :d WHERE seq = :s"),
                       {"p": previous_seq, "d": digest, "s": seq})
            previous_seq, previous_digest = seq, digest
        db.add(AuditChainHead(id=1, last_seq=previous_seq, digest=previous_digest, updated=datetime.now(UTC)))
        db.commit()
    upgrade("share", engine)
    found = verdict(sessions)
    assert found.intact and found.checked == 4 and found.head_digest == previous_digest.hex(), found.problem
    write(sessions, trail, 2)  # the chain goes on from where the old one ended
    assert chain(sessions) == 2 and verdict(sessions).intact
    if engine.dialect.name == "sqlite":  # rebuilt by the migration: a seq is still never reused
        with engine.connect() as connection:
            table_sql = connection.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'audit_log'"))
        assert "AUTOINCREMENT" in table_sql
    engine.dispose()
