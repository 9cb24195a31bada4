"""The store's most frequent statements, run as plain SQL on the session's own driver connection.

A create, a read and a search page each run a handful of small statements, and SQLAlchemy's per-statement work
(compiling, parameter processing, result wrapping) was measured at about 0.1 ms of CPU per statement on top of
the driver's own: more than half of a create's database cost. These few statements are therefore written once in
plain SQL and executed on the same DBAPI connection — inside the same transaction — as the rest of the request.
Everything less frequent stays with SQLAlchemy.

The SQL is portable between PostgreSQL (psycopg) and SQLite; ``Dialect`` covers the three differences: the
placeholder, how a timestamp is stored (SQLite keeps SQLAlchemy's text format) and how a boolean comes back.
Driver errors are re-raised as SQLAlchemy's, so callers (and the 409 handler) see one kind of error.
The SQL is composed from the constant column lists below and placeholders only — never from a value.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from sqlalchemy import exc
from sqlalchemy.orm import Session

from services.kit.db import TransactionRequired, without_transaction

if TYPE_CHECKING:
    from services.share.audit.trail import AuditRow

VERSION_COLUMNS = (
    "resource_type", "resource_id", "version", "network_id", "patient_id", "data_key_id", "body", "deleted",
    "method", "last_updated", "author", "author_organization", "layout",
)
HEAD_COLUMNS = ("resource_type", "resource_id", "network_id", "patient_id", "version", "deleted", "last_updated")
INDEX_COLUMNS = ("network_id", "resource_type", "resource_id", "param", "value", "date_low", "date_high")
_TIME_COLUMNS = frozenset({"last_updated", "date_low", "date_high"})
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's storage format for DateTime on SQLite


class VersionRow(NamedTuple):
    """One ``resource_versions`` row; it has the attributes of the ORM class, so either can be opened."""

    resource_type: str
    resource_id: str
    version: int
    network_id: str
    patient_id: str
    data_key_id: str
    body: bytes
    deleted: bool
    method: str
    last_updated: datetime
    author: str
    author_organization: str
    layout: bytes | None  # a sheet's section layout (services/share/access/layout.py)
    # Its data key's row (id, network, patient, KEK version, wrapped key, destroyed at), read in the same
    # statement where that was cheap: a cold key then costs an unwrap, not a query of its own.
    wrapped_key: tuple[Any, ...] | None = None


class Dialect:
    def __init__(self, name: str) -> None:
        self.sqlite = name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"

    def time_in(self, value: datetime | None) -> Any:
        if value is None or not self.sqlite:
            return value
        return value.astimezone(UTC).strftime(_SQLITE_TIME)

    def time_out(self, value: Any) -> datetime:
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def placeholders(self, count: int) -> str:
        return ", ".join([self.mark] * count)


def _insert_sql(dialect: Dialect, table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({dialect.placeholders(len(columns))})"


# A new resource's rows: its first version, its head, its index entries (Statements.insert_new).
NewRows = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]
_VERSION_SELECT = ", ".join(f"v.{c}" for c in VERSION_COLUMNS)
_KEY_SELECT = "k.id, k.network_id, k.patient_id, k.kek_version, k.wrapped, k.destroyed_at"
_PG_TYPES = {
    "resource_type": "varchar", "resource_id": "varchar", "version": "integer", "network_id": "varchar",
    "patient_id": "varchar", "data_key_id": "varchar", "body": "bytea", "deleted": "boolean", "method": "varchar",
    "last_updated": "timestamptz", "author": "varchar", "author_organization": "varchar", "layout": "bytea",
    "param": "varchar", "value": "varchar",
    "date_low": "timestamptz", "date_high": "timestamptz",
}


# Session.info entries for a create (in a transaction or, by Database.reading, without one): AUDIT_WITH_WRITE, a
# function giving the interaction's sealed audit rows, which the version's single statement then writes too (so
# the record lands with the write, or neither does); AUDIT_WRITTEN, set once it has.
AUDIT_WITH_WRITE = "renkei.store.audit_with_write"
AUDIT_WRITTEN = "renkei.store.audit_written"
_AUDIT_COLUMNS = "network_id, recorded, agent, patient_id, action, outcome, data_key_id, event"
_AUDIT_ARRAYS = "%s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[]"
_AUDIT_VALUES = _AUDIT_ARRAYS.replace("[]", "")


def _pg_insert(check_patient: bool, new_head: bool, audit: int = 0) -> str:
    """One PostgreSQL statement writing a version, its head (when new), its index entries and (``audit``) the
    interaction's audit rows — only if the compartment's Patient exists undeleted (when ``check_patient``). It
    answers how many versions it wrote (0/1): one round trip where a check and four inserts took five."""

    def typed(columns: Sequence[str]) -> str:
        return ", ".join(f"%s::{_PG_TYPES[c]}" for c in columns)

    ok = _PATIENT_EXISTS if check_patient else "SELECT 1"
    parts = [
        f"ok AS ({ok})",
        f"v AS (INSERT INTO resource_versions ({', '.join(VERSION_COLUMNS)}) SELECT {typed(VERSION_COLUMNS)}"
        " FROM ok RETURNING 1)",
    ]
    if new_head:
        parts.append(f"h AS (INSERT INTO resources ({', '.join(HEAD_COLUMNS)}) SELECT {typed(HEAD_COLUMNS)} FROM ok)")
    record = ", ".join(f"{c} {_PG_TYPES[c]}" for c in INDEX_COLUMNS)
    parts.append(
        f"i AS (INSERT INTO search_index ({', '.join(INDEX_COLUMNS)}) SELECT {', '.join(INDEX_COLUMNS)}"
        f" FROM jsonb_to_recordset(%s::jsonb) AS x({record}) WHERE EXISTS (SELECT 1 FROM ok))"
    )
    return f"WITH {', '.join([*parts, *_audit_cte(audit)])} SELECT count(*) FROM v"


# The row a statement's writes are gated on (its ``ok`` expression): the compartment's Patient, undeleted.
_PATIENT_EXISTS = ("SELECT 1 FROM resources WHERE resource_type = 'Patient' AND resource_id = %s AND network_id = %s"
                   " AND NOT deleted")


def _audit_cte(audit: int) -> list[str]:
    """The interaction's ``audit`` rows written with a statement, only if its ``ok`` expression has a row."""
    if audit == 1:  # the usual one row as plain values: arrays cost the driver Python work per value
        return [f"a AS (INSERT INTO audit_log ({_AUDIT_COLUMNS}) SELECT {_AUDIT_VALUES} FROM ok)"]
    if audit > 1:
        return [f"a AS (INSERT INTO audit_log ({_AUDIT_COLUMNS}) SELECT * FROM unnest({_AUDIT_ARRAYS})"
                " WHERE EXISTS (SELECT 1 FROM ok))"]
    return []


_BYTEA_COLUMNS = frozenset({"body", "layout"})


def _pg_insert_many(gated: bool = False) -> str:
    """The common table expressions writing the first versions, heads and index entries of several new resources
    in one PostgreSQL statement: each table's rows as one JSON document (bytea base64-encoded), whatever their
    number — one C call to encode, where arrays of each column cost the driver Python work per value (a shared
    sheet's two Tasks spent more on that than on the rest of their statement). ``gated``: only if the statement's
    ``ok`` expression has a row (``_pg_insert_together``)."""
    where = " WHERE EXISTS (SELECT 1 FROM ok)" if gated else ""

    def rows_of(columns: Sequence[str]) -> str:
        record = ", ".join(f"{c} {'text' if c in _BYTEA_COLUMNS else _PG_TYPES[c]}" for c in columns)
        values = ", ".join(f"decode({c}, 'base64')" if c in _BYTEA_COLUMNS else c for c in columns)
        return f"SELECT {values} FROM jsonb_to_recordset(%s::jsonb) AS x({record}){where}"

    return (f"v AS (INSERT INTO resource_versions ({', '.join(VERSION_COLUMNS)}) {rows_of(VERSION_COLUMNS)}"
            f"{' RETURNING 1' if gated else ''}),"
            f" h AS (INSERT INTO resources ({', '.join(HEAD_COLUMNS)}) {rows_of(HEAD_COLUMNS)}),"
            f" i AS (INSERT INTO search_index ({', '.join(INDEX_COLUMNS)}) {rows_of(INDEX_COLUMNS)})")


def _pg_insert_together(audit: int, also: str | None, unless: str | None) -> str:
    """Statements.insert_together's statement: new resources (``_pg_insert_many``), the interaction's audit rows
    (``audit``, as in _pg_insert) and a statement of another module's (``also``, which selects its values ``FROM
    ok``), written only if the first resource's Patient exists undeleted and the condition ``unless`` holds. It
    answers how many versions it wrote."""
    ok = f"{_PATIENT_EXISTS} AND {unless}" if unless else _PATIENT_EXISTS
    parts = [f"ok AS ({ok})", _pg_insert_many(gated=True), *_audit_cte(audit)]
    if also:
        parts.append(f"also AS ({also})")
    return f"WITH {', '.join(parts)} SELECT count(*) FROM v"


def _documents(resources: Sequence[NewRows]) -> list[str]:
    """_pg_insert_many's three parameters: the new resources' versions, heads and index entries."""
    return [_json_rows([v for v, _, _ in resources], VERSION_COLUMNS), _json_rows([h for _, h, _ in resources],
            HEAD_COLUMNS), orjson.dumps([entry for _, _, index in resources for entry in index]).decode()]


def _json_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows for _pg_insert_many's JSON documents: the columns only, bytea as base64."""
    return orjson.dumps([{c: base64.b64encode(row[c]).decode() if c in _BYTEA_COLUMNS and row[c] is not None
                          else row[c] for c in columns} for row in rows]).decode()


@dataclass(frozen=True)
class Beside:
    """What another module writes in the statement of a new resource (Statements.insert_together): new resources
    of the same patient, a statement (SQL, values) that selects its values ``FROM ok`` — the row that exists only
    while the write may happen — and a condition (SQL, values) without which nothing is written."""

    resources: Sequence[NewRows] = ()
    also: tuple[str, Sequence[Any]] | None = None
    unless: tuple[str, Sequence[Any]] | None = None


class Statements:
    """The hot statements for one database dialect."""

    def __init__(self, dialect_name: str) -> None:
        d = self.dialect = Dialect(dialect_name)
        m = d.mark
        self.insert_version = _insert_sql(d, "resource_versions", VERSION_COLUMNS)
        self.insert_head = _insert_sql(d, "resources", HEAD_COLUMNS)
        self.insert_index = _insert_sql(d, "search_index", INDEX_COLUMNS)
        self.pg_insert_many = _pg_insert_many()
        # PostgreSQL writes a whole new version in one statement (see _pg_insert); keyed by (check, new head).
        self._pg_inserts = {(check, new, audit): _pg_insert(check, new, audit)
                            for check in (False, True) for new in (False, True) for audit in (0, 1, 2)}
        # insert_together's statements, by (audit rows, also SQL, unless SQL): a few, built on first use.
        self._pg_together: dict[tuple[int, str | None, str | None], str] = {}
        self.patient_state = (
            f"SELECT network_id, deleted FROM resources WHERE resource_type = 'Patient' AND resource_id = {m}"
        )
        self._current = (
            f"SELECT {_VERSION_SELECT}, {_KEY_SELECT} FROM resources h JOIN resource_versions v"
            " ON v.resource_type = h.resource_type AND v.resource_id = h.resource_id AND v.version = h.version"
            " LEFT JOIN data_keys k ON k.id = v.data_key_id"
            f" WHERE h.network_id = {m}"
        )
        self.current_one = f"{self._current} AND h.resource_type = {m} AND h.resource_id = {m}"
        # The page's keys are chosen first and only its own versions are read: a patient with a thousand notes
        # costs twenty bodies, not a thousand (sorted, then mostly thrown away).
        self.timeline = _timeline_sql(m, m, m, m, "")
        if not d.sqlite:
            # timeline_with_facts: named parameters, each sent once however often the statement uses it.
            facts = _facts_sql(network="%(network)s", subject="%(subject)s", now="%(now)s",
                               among="= %(patient)s", as_text="")
            self.timeline_facts = _timeline_sql(
                "%(network)s", "%(type)s", "%(reference)s", "%(limit)s",
                # Every row repeats the facts (computed once): cheaper than a window to send them with one row only.
                ", (SELECT coalesce(json_agg(json_build_array(x.a, x.b, x.c, x.d, x.e, x.f, x.g, x.h, x.i, x.j, x.k)),"
                f" '[]')::text FROM ({facts}) x)")
        self.owned_key = (
            f"SELECT {_KEY_SELECT} FROM data_keys k WHERE k.network_id = {m} AND k.patient_id = {m}"
        )
        self.audit_row = (
            "INSERT INTO audit_log (network_id, recorded, agent, patient_id, action, outcome, data_key_id, event)"
            f" VALUES ({d.placeholders(8)}) RETURNING seq"
        )
        self.audit_rows = f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) SELECT * FROM unnest({_AUDIT_ARRAYS})"
        self.one_version = (
            f"SELECT {_VERSION_SELECT} FROM resource_versions v"
            f" WHERE v.resource_type = {m} AND v.resource_id = {m} AND v.version = {m}"
        )

    # Reads -----------------------------------------------------------------------------------------------

    def access_facts(self, db: Session, network_id: str, patient_ids: Sequence[str], subject: str,
                     now: datetime) -> list[tuple[Any, ...]]:
        """What access decisions read about these patients, in one round trip (services/share/access/): rows of
        (patient, "t", kind, member, role, start, end, approved) for care-team participants of active teams,
        (patient, "c", status, -, -, start, end, -, organizations, excluded, withheld) for active consents (the
        last three JSON text), and (patient, "g", -, -, -, -, expires) for ``subject``'s unexpired break-the-glass
        grants. Times come back as datetimes."""
        d = self.dialect
        sql, parameters = self._facts_query(network_id, patient_ids, subject, now)
        with self._cursor(db) as cursor:
            cursor.execute(sql, parameters)
            rows = cursor.fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else d.time_out(r[5]),
                 None if r[6] is None else d.time_out(r[6]), r[7], r[8], r[9], r[10]) for r in rows]

    def _facts_query(self, network_id: str, patient_ids: Sequence[str], subject: str, now: datetime
                     ) -> tuple[str, list[Any]]:
        d = self.dialect
        if d.sqlite:
            among = f"IN ({d.placeholders(len(patient_ids))})"
            patients: list[Any] = list(patient_ids)
        else:
            among, patients = "= ANY(%s)", [list(patient_ids)]
        m = d.mark
        sql = _facts_sql(network=m, subject=m, now=m, among=among, as_text="" if d.sqlite else "::text")
        return sql, [network_id, *patients, network_id, *patients, network_id, *patients, subject, d.time_in(now)]

    def timeline_with_facts(self, db: Session, network_id: str, resource_type: str, patient_reference: str,
                            limit: int, patient_id: str, subject: str, now: datetime
                            ) -> tuple[list[VersionRow], list[tuple[Any, ...]] | None]:
        """``patient_timeline`` and ``access_facts`` of its patient in one statement (PostgreSQL): the facts
        ride along as a JSON column, so a tablet's most frequent search makes one round trip for both. The
        facts are None when the page is empty (or on SQLite): the caller then asks for them on their own."""
        if self.dialect.sqlite:
            return self.patient_timeline(db, network_id, resource_type, patient_reference, limit), None
        with self._cursor(db) as cursor:
            cursor.execute(self.timeline_facts, {
                "network": network_id, "patient": patient_id, "subject": subject, "now": now,
                "type": resource_type, "reference": patient_reference, "limit": limit})
            rows = cursor.fetchall()
        if not rows:
            return [], None
        facts = [(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else datetime.fromisoformat(r[5]),
                  None if r[6] is None else datetime.fromisoformat(r[6]), r[7], r[8], r[9], r[10])
                 for r in orjson.loads(rows[0][-1])]
        return [self._version(row) for row in rows], facts  # the facts column after the key is not read

    def rows(self, db: Session, sql: str, parameters: Sequence[Any], *, flush: bool = True) -> list[tuple[Any, ...]]:
        """The rows of a statement of another module's (written with ``dialect.mark`` placeholders), on the
        session's connection without the ORM's compiling — for the few statements a hot path runs each time."""
        with self._cursor(db, flush=flush) as cursor:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall()) if cursor.description else []

    def patient(self, db: Session, patient_id: str) -> tuple[str, bool] | None:
        """(network id, deleted) of a Patient's head, or None."""
        with self._cursor(db) as cursor:
            cursor.execute(self.patient_state, (patient_id,))
            row = cursor.fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def data_key(self, db: Session, network_id: str, patient_id: str) -> tuple[Any, ...] | None:
        """The data key row of a patient (or network): (id, network, patient, KEK version, wrapped, destroyed at).

        Nothing pending in the session is flushed first: a data key depends on no row of the caller's."""
        with self._cursor(db, flush=False) as cursor:
            cursor.execute(self.owned_key, (network_id, patient_id))
            row = cursor.fetchone()
        return None if row is None else self._key(row, 0)

    def current(self, db: Session, network_id: str, resource_type: str, resource_id: str) -> VersionRow | None:
        with self._cursor(db) as cursor:
            cursor.execute(self.current_one, (network_id, resource_type, resource_id))
            row = cursor.fetchone()
        return None if row is None else self._version(row)

    def currents(self, db: Session, network_id: str, keys: Sequence[tuple[str, str]]) -> list[VersionRow]:
        """Current, undeleted versions of the given (type, id) pairs in one statement (order not kept)."""
        if not keys:
            return []
        pairs = ", ".join([f"({self.dialect.mark}, {self.dialect.mark})"] * len(keys))
        sql = f"{self._current} AND NOT h.deleted AND (h.resource_type, h.resource_id) IN (VALUES {pairs})"
        parameters = [network_id, *(part for key in keys for part in key)]
        with self._cursor(db) as cursor:
            cursor.execute(sql, parameters)
            return [self._version(row) for row in cursor.fetchall()]

    def patient_timeline(self, db: Session, network_id: str, resource_type: str, patient_reference: str,
                         limit: int) -> list[VersionRow]:
        """Current versions of one patient's resources of a type, newest first (``search.SearchRunner.page``'s
        ``patient=<id>`` search, first page)."""
        with self._cursor(db) as cursor:
            cursor.execute(self.timeline, (network_id, resource_type, network_id, resource_type, patient_reference,
                                           limit))
            return [self._version(row) for row in cursor.fetchall()]

    def version(self, db: Session, resource_type: str, resource_id: str, version: int) -> VersionRow | None:
        with self._cursor(db) as cursor:
            cursor.execute(self.one_version, (resource_type, resource_id, version))
            row = cursor.fetchone()
        return None if row is None else self._version(row)

    def generic_plans(self, db: Session) -> None:
        """PostgreSQL: this transaction's prepared statements use their generic plan instead of re-planning."""
        with self._cursor(db) as cursor:
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")

    # Writes ----------------------------------------------------------------------------------------------

    def insert_audit(self, db: Session, row: AuditRow) -> int:
        """One audit-log row (services/share/audit/trail.py): its seq. Nothing pending is flushed first."""
        with self._cursor(db, flush=False) as cursor:
            cursor.execute(self.audit_row, (*row[:1], self.dialect.time_in(row.recorded), *row[2:]))
            found = cursor.fetchone()
        return int(found[0])

    def insert_audit_rows(self, db: Session, rows: Sequence[AuditRow]) -> None:
        """Many audit-log rows in one statement (services/share/audit/writer.py): one array per column, so that
        every batch size shares one prepared statement. PostgreSQL only."""
        columns = [list(column) for column in zip(*rows, strict=True)]
        with self._cursor(db, flush=False) as cursor:
            cursor.execute(self.audit_rows, columns)

    def insert(self, db: Session, version: dict[str, Any], head: dict[str, Any] | None,
               index: list[dict[str, Any]], *, patient: tuple[str, str] | None = None) -> bool:
        """A new version row, its new head row (None when the head exists already) and its index entries.

        With ``patient`` (network id, patient id) the rows are written only if that Patient exists, undeleted,
        in that network, checked in the same statement on PostgreSQL; False means nothing was written.
        """
        if not self.dialect.sqlite:
            return self._pg_insert_rows(db, version, head, index, patient)
        if without_transaction(db):  # several statements here, which must commit together
            raise TransactionRequired("SQLite writes a version in several statements")
        if patient is not None:
            state = self.patient(db, patient[1])
            if state is None or state != (patient[0], False):
                return False
        with self._cursor(db) as cursor:
            cursor.execute(self.insert_version, self._values(version, VERSION_COLUMNS))
            if head is not None:
                cursor.execute(self.insert_head, self._values(head, HEAD_COLUMNS))
            if index:
                cursor.executemany(self.insert_index, [self._values(entry, INDEX_COLUMNS) for entry in index])
        return True

    def insert_new(self, db: Session, resources: Sequence[NewRows], *, also: tuple[str, Sequence[Any]] | None = None,
                   then: tuple[str, Sequence[Any]] | None = None) -> list[tuple[Any, ...]]:
        """Several new resources' (version, head, index entries) at once, a statement ``also`` to run with them (a
        write) and a query ``then`` whose rows are answered — on PostgreSQL all in one statement (what a shared
        sheet's rules write beside it: services/share/sheets/rules.py). The resources' patient must exist."""
        if self.dialect.sqlite:
            for version, head, index in resources:
                self.insert(db, version, head, index)
            if also is not None:
                self.rows(db, *also, flush=False)
            return self.rows(db, *then, flush=False) if then is not None else []
        ctes: list[str] = []
        parameters: list[Any] = []
        if resources:
            ctes.append(self.pg_insert_many)
            parameters += _documents(resources)
        if also is not None:
            ctes.append(f"also AS ({also[0]})")
            parameters += also[1]
        query = "SELECT 1"
        if then is not None:
            query = then[0]
            parameters += then[1]
        if not ctes and then is None:
            return []
        with self._cursor(db) as cursor:
            cursor.execute(f"WITH {', '.join(ctes)} {query}" if ctes else query, parameters)
            return list(cursor.fetchall()) if then is not None else []

    def insert_together(self, db: Session, resources: Sequence[NewRows], patient: tuple[str, str],
                        beside: Beside) -> bool:
        """New resources of one patient (network id, patient id) — the first one's audit rows (AUDIT_WITH_WRITE)
        and ``beside``'s statement with them — in one PostgreSQL statement, written only if that Patient exists
        undeleted and ``beside.unless`` holds; False means nothing was written. A shared sheet with its record and
        Tasks (services/share/sheets/rules.py): where a transaction took four round trips, one that commits by
        itself (Database.reading)."""
        assert not self.dialect.sqlite, "SQLite writes in several statements, in a transaction"
        unless, also = beside.unless, beside.also
        parameters: list[Any] = [patient[1], patient[0], *(unless[1] if unless else ()), *_documents(resources)]
        audit_rows = self._audit_parameters(db, parameters)
        if also is not None:
            parameters += also[1]
        key = (min(len(audit_rows or ()), 2), also[0] if also else None, unless[0] if unless else None)
        sql = self._pg_together.get(key)
        if sql is None:
            sql = self._pg_together[key] = _pg_insert_together(*key)
        return self._written(db, sql, parameters, audit_rows)

    def _pg_insert_rows(self, db: Session, version: dict[str, Any], head: dict[str, Any] | None,
                        index: list[dict[str, Any]], patient: tuple[str, str] | None) -> bool:
        parameters: list[Any] = [patient[1], patient[0]] if patient is not None else []
        parameters += self._values(version, VERSION_COLUMNS)
        if head is not None:
            parameters += self._values(head, HEAD_COLUMNS)
        # Index rows travel as one JSON document: dumping it is a single C call, where arrays or an executemany
        # cost the driver Python work per value.
        parameters.append(orjson.dumps(index).decode())
        audit_rows = self._audit_parameters(db, parameters)
        audit_mode = min(len(audit_rows or ()), 2)
        return self._written(db, self._pg_inserts[(patient is not None, head is not None, audit_mode)], parameters,
                             audit_rows)

    @staticmethod
    def _audit_parameters(db: Session, parameters: list[Any]) -> list[Any] | None:
        """The interaction's audit rows to write with this statement (AUDIT_WITH_WRITE), added to ``parameters``:
        one row as plain values, several as one array per column."""
        audit = db.info.pop(AUDIT_WITH_WRITE, None)
        audit_rows = audit() if audit is not None else None
        if audit_rows and len(audit_rows) == 1:
            parameters += list(audit_rows[0])
        elif audit_rows:
            parameters += [list(column) for column in zip(*audit_rows, strict=True)]
        return audit_rows

    def _written(self, db: Session, sql: str, parameters: list[Any], audit_rows: list[Any] | None) -> bool:
        with self._cursor(db) as cursor:
            cursor.execute(sql, parameters)
            found = cursor.fetchone()
        written = bool(found and found[0])
        if audit_rows and written:
            db.info[AUDIT_WRITTEN] = True
        return written

    # Plumbing --------------------------------------------------------------------------------------------

    def _values(self, row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
        """A row's values in column order, timestamps as this dialect stores them."""
        return [self.dialect.time_in(row[c]) if c in _TIME_COLUMNS else row[c] for c in columns]

    def _key(self, row: Sequence[Any], at: int) -> tuple[Any, ...]:
        """The data key columns (``_KEY_SELECT``) starting at ``row[at]``."""
        destroyed = None if row[at + 5] is None else self.dialect.time_out(row[at + 5])
        return row[at], row[at + 1], row[at + 2], row[at + 3], bytes(row[at + 4]), destroyed

    def _version(self, row: Sequence[Any]) -> VersionRow:
        key = self._key(row, 13) if len(row) > 13 and row[13] is not None else None
        return VersionRow(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), bool(row[7]), row[8],
                          self.dialect.time_out(row[9]), row[10], row[11], None if row[12] is None else bytes(row[12]),
                          key)

    @contextmanager
    def _cursor(self, db: Session, flush: bool = True) -> Iterator[Any]:
        """A cursor on the session's connection, after the session's pending ORM changes are flushed."""
        if flush and (db.new or db.dirty or db.deleted):
            db.flush()
        connection, driver_error = _driver(db)
        # PostgreSQL answers in binary: bodies arrive as raw bytes instead of hex text twice their size (encoded by
        # the server, decoded here), and timestamps without text parsing.
        cursor = connection.cursor() if self.dialect.sqlite else connection.cursor(binary=True)
        try:
            yield cursor
        except driver_error as error:
            # As SQLAlchemy would raise it: an IntegrityError is a write conflict to the app (409).
            raise exc.DBAPIError.instance(None, None, error, driver_error) from error
        finally:
            cursor.close()


# Session.info entry: (the session's transaction, its driver connection, the driver's error class).
_DRIVER = "renkei.store.driver"


def _driver(db: Session) -> tuple[Any, type[Exception]]:
    """The session's driver connection, looked up once per session transaction: Session.connection() walks
    SQLAlchemy's transaction machinery each time, and a request runs several of these statements."""
    cached = db.info.get(_DRIVER)
    if cached is not None and cached[0] is db.get_transaction():
        return cached[1], cached[2]
    connection = db.connection().connection.driver_connection
    assert connection is not None
    driver_error: type[Exception] = db.get_bind().dialect.loaded_dbapi.Error
    db.info[_DRIVER] = (db.get_transaction(), connection, driver_error)
    return connection, driver_error


_BY_DIALECT: dict[str, Statements] = {}


def statements(db: Session) -> Statements:
    """The statements for the session's database."""
    name = db.get_bind().dialect.name
    found = _BY_DIALECT.get(name)
    if found is None:
        found = _BY_DIALECT[name] = Statements(name)
    return found


def _timeline_sql(network: str, resource_type: str, reference: str, limit: str, extra: str) -> str:
    """One patient's newest resources of a type, ``limit`` of them (markers given), with ``extra`` columns.

    The page's keys are chosen first and only its own versions are read: a patient with a thousand notes costs
    twenty bodies, not a thousand (sorted, then mostly thrown away)."""
    return (
        f"SELECT {_VERSION_SELECT}, {_KEY_SELECT}{extra} FROM (SELECT h.resource_type, h.resource_id, h.version,"
        f" h.last_updated FROM resources h WHERE h.network_id = {network} AND h.resource_type = {resource_type}"
        f" AND NOT h.deleted AND EXISTS (SELECT 1 FROM search_index s WHERE s.network_id = {network}"
        f" AND s.resource_type = {resource_type} AND s.resource_id = h.resource_id AND s.param = 'patient'"
        f" AND s.value = {reference}) ORDER BY h.last_updated DESC, h.resource_id DESC LIMIT {limit}) page"
        " JOIN resource_versions v ON v.resource_type = page.resource_type AND v.resource_id = page.resource_id"
        " AND v.version = page.version LEFT JOIN data_keys k ON k.id = v.data_key_id"
        " ORDER BY page.last_updated DESC, page.resource_id DESC"
    )


def _facts_sql(*, network: str, subject: str, now: str, among: str, as_text: str) -> str:
    """Statements.access_facts's rows (markers given; ``among`` the condition on the patient id, ``as_text`` the
    cast of JSON columns)."""
    return (
        f'SELECT patient_id AS a, \'t\' AS b, kind AS c, member_id AS d, role AS e, start AS f, "end" AS g,'
        f" approved AS h, NULL AS i, NULL AS j, NULL AS k FROM care_team_participants"
        f" WHERE network_id = {network} AND patient_id {among} AND team_status = 'active'"
        f' UNION ALL SELECT patient_id, \'c\', status, NULL, NULL, start, "end", NULL, organizations{as_text},'
        f" excluded_organizations{as_text}, withheld_labels{as_text} FROM consent_terms"
        f" WHERE network_id = {network} AND patient_id {among} AND status = 'active'"
        " UNION ALL SELECT patient_id, 'g', NULL, NULL, NULL, NULL, expires_at, NULL, NULL, NULL, NULL"
        f" FROM break_glass_grants WHERE network_id = {network} AND patient_id {among}"
        f" AND subject = {subject} AND expires_at > {now}"
    )
