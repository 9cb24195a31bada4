"""Filling a store to benchmark size through the store's own row-building path (encryption, data keys and blind
index included), written with PostgreSQL COPY so a million resources load in minutes.

Validation is skipped — the fixtures are valid by construction and validation is the HTTP edge's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert

from bench.fixtures import patient, sheet
from services.kit.settings import Settings
from services.share.access.models import ConsentTerms, TeamParticipant
from services.share.context import ShareContext
from services.share.store.service import Caller, Rows

_COLUMNS = {
    "resource_versions": ("resource_type", "resource_id", "version", "network_id", "patient_id", "data_key_id",
                          "body", "deleted", "method", "last_updated", "author", "author_organization",
                          "layout"),
    "resources": ("resource_type", "resource_id", "network_id", "patient_id", "version", "deleted", "last_updated"),
    "search_index": ("network_id", "resource_type", "resource_id", "param", "value", "date_low", "date_high"),
}


def _flush(session: Any, pending: list[Rows], teams: list[dict[str, Any]], consents: list[dict[str, Any]]) -> None:
    tables = {"resource_versions": [r.version for r in pending], "resources": [r.head for r in pending],
              "search_index": [row for r in pending for row in r.index]}
    # What access decisions read (services/share/access/models.py): each patient's team, with the bench
    # organisation in it, and their consent to sharing — so the benchmark's reads pass every check.
    if teams:
        session.execute(insert(TeamParticipant), teams)
        session.execute(insert(ConsentTerms), consents)
        teams.clear()
        consents.clear()
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        from services.share.store.models import ResourceHead, ResourceVersion
        from services.share.store.service import SEARCH_TABLE

        session.execute(insert(ResourceVersion), tables["resource_versions"])
        session.execute(insert(ResourceHead), tables["resources"])
        session.execute(insert(SEARCH_TABLE), tables["search_index"])
        return
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:
        for table, rows in tables.items():
            columns = _COLUMNS[table]
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(tuple(row[c] for c in columns))


def seed(settings: Settings, network_id: str, patients: int, heavy: int, sheets_heavy: int, sheets_light: int,
         progress: Callable[[int], None] | None = None, batch: int = 250,
         plaintext: bool = False, organization: str = "",
         make_sheet: Callable[[str, str, int], dict[str, Any]] = sheet) -> tuple[list[str], list[str], list[str]]:
    """Create ``patients`` patients; the first ``heavy`` get ``sheets_heavy`` sheets each, the rest
    ``sheets_light``; each patient's team holds ``organization`` and the patient consents to sharing.
    Returns (patient ids, heavy patient ids, a sample of sheet ids)."""
    ctx = ShareContext.build(settings, plaintext_baseline=plaintext)
    caller = Caller(network_id, "user:bench-seed", organization)
    teams: list[dict[str, Any]] = []
    consents: list[dict[str, Any]] = []
    patient_ids: list[str] = []
    sample: list[str] = []
    written = 0
    pending: list[Rows] = []
    session = ctx.db.sessions()
    try:
        for index in range(patients):
            stored, rows = ctx.store.prepare_new(session, caller, "Patient", patient(index))
            pending.append(rows)
            patient_ids.append(stored.resource_id)
            teams.append(_participant(network_id, stored.resource_id, organization))
            consents.append(_consent(network_id, stored.resource_id))
            for day in range(sheets_heavy if index < heavy else sheets_light):
                created, rows = ctx.store.prepare_new(session, caller, "QuestionnaireResponse",
                                                      make_sheet(stored.resource_id, "bench-author", day))
                pending.append(rows)
                if len(sample) < 20000 and written % 7 == 0:
                    sample.append(created.resource_id)
                written += 1
            written += 1
            if index % batch == batch - 1:
                _flush(session, pending, teams, consents)
                session.commit()
                pending = []
                if progress:
                    progress(written)
        _flush(session, pending, teams, consents)
        session.commit()
    finally:
        session.close()
        ctx.db.dispose()
    return patient_ids, patient_ids[:heavy], sample


def _participant(network_id: str, patient_id: str, organization: str) -> dict[str, Any]:
    return {"care_team_id": f"team-{patient_id}", "position": 0, "network_id": network_id, "patient_id": patient_id,
            "team_status": "active", "kind": "organization", "member_id": organization, "role": "primary-physician",
            "start": None, "end": None, "approved": True}


def _consent(network_id: str, patient_id: str) -> dict[str, Any]:
    return {"consent_id": f"consent-{patient_id}", "network_id": network_id, "patient_id": patient_id,
            "status": "active", "start": None, "end": None, "organizations": None, "excluded_organizations": [],
            "withheld_labels": []}


if __name__ == "__main__":  # a quick speed check: python -m bench.seed
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        url = os.environ.get("RENKEI_SHARE_DATABASE_URL")
        settings = Settings(data_dir=scratch, share_database_url=url)
        from services.kit.db import make_engine
        from services.kit.migrate import upgrade

        engine = make_engine(settings.resolved_share_database_url)
        upgrade("share", engine)
        engine.dispose()
        start = time.perf_counter()
        seed(settings, "speed", 400, 40, 20, 5)
        print(f"{(400 + 40 * 20 + 360 * 5) / (time.perf_counter() - start):.0f} resources/s")
