"""The rows the sheet rules read and write on every share — ``sheet_records`` and the patient's care team — as
plain statements: a shared sheet runs them each time, and the ORM's unit of work and query compiling cost more
CPU than the statements themselves (bench/sheets.py).

``context`` is one round trip for all a share needs to know of its patient: the team members in the roles the
scene rules ask, and the current (shared) sheets of the kinds a patient has one of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from services.share.sheets.lifecycle import SHARED
from services.share.store.statements import NewRows, Statements, statements

_COLUMNS = ("resource_id", "network_id", "patient_id", "kind", "template", "status", "version",
            "author_organization", "updated_at", "reviewed_at", "review_task")


@dataclass
class SheetState:
    """One ``sheet_records`` row."""

    resource_id: str
    network_id: str
    patient_id: str
    kind: str
    template: str
    status: str
    version: int
    author_organization: str
    updated_at: datetime
    reviewed_at: datetime | None = None
    review_task: str = ""


@dataclass(frozen=True)
class Member:
    kind: str  # practitioner | organization | practitioner-role
    member_id: str
    role: str
    start: datetime | None
    end: datetime | None


@dataclass
class PatientSheets:
    members: list[Member] = field(default_factory=list)
    current: dict[str, list[SheetState]] = field(default_factory=dict)  # kind -> shared sheets, newest first


_PG_TYPES = {"version": "integer", "updated_at": "timestamptz", "reviewed_at": "timestamptz"}  # else varchar


class _Sql:
    def __init__(self, mark: str) -> None:
        m = mark
        columns = ", ".join(_COLUMNS)
        self.one = f"SELECT {columns} FROM sheet_records WHERE resource_id = {m}"
        self.insert = f"INSERT INTO sheet_records ({columns}) VALUES ({', '.join([m] * len(_COLUMNS))})"
        self.update = (f"UPDATE sheet_records SET kind = {m}, template = {m}, status = {m}, version = {m},"
                       f" updated_at = {m}, reviewed_at = {m}, review_task = {m} WHERE resource_id = {m}")
        self.review_task = f"UPDATE sheet_records SET review_task = {m} WHERE resource_id = {m}"
        # PostgreSQL, in Statements.insert_together: a new row only if its statement writes (``ok``), and the
        # condition that no review of the patient's current emergency sheet is wanted (SheetRules.raise_review).
        typed = ", ".join(f"{m}::{_PG_TYPES.get(column, 'varchar')}" for column in _COLUMNS)
        self.insert_gated = f"INSERT INTO sheet_records ({columns}) SELECT {typed} FROM ok"
        self.no_review_wanted = (
            f"NOT EXISTS (SELECT 1 FROM sheet_records WHERE network_id = {m} AND patient_id = {m}"
            f" AND kind = 'EmergencySheet' AND status IN ({', '.join(repr(status) for status in sorted(SHARED))})"
            " AND review_task = '')")
        self.context = (
            f"SELECT 'm', kind, member_id, role, NULL, NULL, NULL, NULL, NULL, start, \"end\""
            f" FROM care_team_participants WHERE network_id = {m} AND patient_id = {m} AND team_status = 'active'"
            f" AND approved = {m}"
            f" UNION ALL SELECT 's', resource_id, kind, template, status, version, author_organization, review_task,"
            f" updated_at, reviewed_at, NULL FROM sheet_records WHERE network_id = {m} AND patient_id = {m}"
            f" AND status IN ({', '.join(repr(status) for status in sorted(SHARED))})"
            f" AND kind IN ('EmergencySheet', 'AcpRecord')")


_BY_MARK: dict[str, _Sql] = {}


def _sql(found: Statements) -> _Sql:
    sql = _BY_MARK.get(found.dialect.mark)
    if sql is None:
        sql = _BY_MARK[found.dialect.mark] = _Sql(found.dialect.mark)
    return sql


def state(db: Session, resource_id: str) -> SheetState | None:
    found = statements(db)
    rows = found.rows(db, _sql(found).one, (resource_id,), flush=False)
    if not rows:
        return None
    values = dict(zip(_COLUMNS, rows[0], strict=True))
    values["updated_at"] = found.dialect.time_out(values["updated_at"])
    values["reviewed_at"] = found.dialect.time_out(values["reviewed_at"]) if values["reviewed_at"] else None
    return SheetState(**values)


def write(db: Session, sheet: SheetState, new: bool, *, with_context: bool = False,
          beside: Sequence[NewRows] = ()) -> PatientSheets | None:
    """Write a sheet's row, and the new resources ``beside`` it (its Tasks); with ``with_context``, also read its
    patient's ``context`` — on PostgreSQL all in one statement (the read sees the patient's other sheets as they
    were before this write, which is what the rules compare with)."""
    found = statements(db)
    sql = _sql(found)
    time_in = found.dialect.time_in
    if new:
        values: list[Any] = [getattr(sheet, column) for column in _COLUMNS]
        values[_COLUMNS.index("updated_at")] = time_in(sheet.updated_at)
        values[_COLUMNS.index("reviewed_at")] = time_in(sheet.reviewed_at)
    else:
        values = [sheet.kind, sheet.template, sheet.status, sheet.version, time_in(sheet.updated_at),
                  time_in(sheet.reviewed_at), sheet.review_task, sheet.resource_id]
    then = (sql.context, _context_parameters(sheet.network_id, sheet.patient_id)) if with_context else None
    rows = found.insert_new(db, beside, also=(sql.insert if new else sql.update, values), then=then)
    return _patient_sheets(found, sheet.network_id, sheet.patient_id, rows) if with_context else None


def insert_gated(db: Session, sheet: SheetState) -> tuple[str, list[Any]]:
    """A new sheet's row, for Statements.insert_together (Beside.also)."""
    sql = _sql(statements(db))
    return sql.insert_gated, [getattr(sheet, column) for column in _COLUMNS]


def no_review_wanted(db: Session, network_id: str, patient_id: str) -> tuple[str, list[Any]]:
    """The condition that the patient has no current emergency sheet waiting for a review Task to be raised (one
    it has is open already), for Statements.insert_together (Beside.unless)."""
    return _sql(statements(db)).no_review_wanted, [network_id, patient_id]


def set_review_task(db: Session, resource_id: str, task_id: str) -> None:
    found = statements(db)
    found.rows(db, _sql(found).review_task, (task_id, resource_id), flush=False)


def current(db: Session, network_id: str, patient_id: str, kind: str) -> SheetState | None:
    """The patient's current emergency sheet or ACP record (``kind``), if there is one."""
    return next(iter(context(db, network_id, patient_id).current.get(kind, [])), None)


def context(db: Session, network_id: str, patient_id: str) -> PatientSheets:
    found = statements(db)
    rows = found.rows(db, _sql(found).context, _context_parameters(network_id, patient_id))
    return _patient_sheets(found, network_id, patient_id, rows)


def _context_parameters(network_id: str, patient_id: str) -> tuple[Any, ...]:
    return network_id, patient_id, True, network_id, patient_id


def _patient_sheets(found: Statements, network_id: str, patient_id: str, rows: list[tuple[Any, ...]]
                    ) -> PatientSheets:
    time_out = found.dialect.time_out
    sheets = PatientSheets()
    for row in rows:
        if row[0] == "m":
            sheets.members.append(Member(row[1], row[2], row[3], time_out(row[9]) if row[9] else None,
                                         time_out(row[10]) if row[10] else None))
            continue
        sheet = SheetState(row[1], network_id, patient_id, row[2], row[3], row[4], int(row[5]), row[6],
                           time_out(row[8]), time_out(row[9]) if row[9] else None, row[7] or "")
        sheets.current.setdefault(sheet.kind, []).append(sheet)
    for listed in sheets.current.values():
        listed.sort(key=lambda s: s.updated_at, reverse=True)
    return sheets

