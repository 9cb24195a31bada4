"""One audit record per interaction: who (user or system client, organisation, device), what (the interaction and
its target), which patients it touched, and how it ended — allowed or refused (services/share/audit/).

The store's access decisions note what they saw on the session (access/gate.py ``Seen``); the runners in
resources.py seal the record (``rows``) when the work is done and write it in the same transaction as the work,
or — for a read served without a transaction, on PostgreSQL — queue it for the worker's next group INSERT
(audit/buffer.py), or — when the work failed and its writes rolled back — write it in a transaction of its own,
so that every refusal is on the record too. What is stored is the compact form (audit/events.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from services.kit.tokens import Principal
from services.share.access.gate import Seen
from services.share.audit.events import compact
from services.share.audit.trail import Access, AuditRow, AuditTrail
from services.share.store.statements import statements


@dataclass(frozen=True)
class Interaction:
    """What a request does: ``action`` C/R/U/D/E, ``kind`` a restful-interaction code (read, search-type …) or an
    operation's name, ``what`` the target (``Type/id``, ``Type`` for a search or create)."""

    action: str
    kind: str
    what: str


# Interactions that change nothing: their records may be written in the background (audit/buffer.py).
# A search is "E" (execute), as IHE BALP records it.
READS = frozenset({"read", "vread", "search-type", "history-instance", "history-type", "invitations"})


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (a refusal, a bad request), 8 serious failure."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def record(trail: AuditTrail, db: Session, principal: Principal, interaction: Interaction, seen: Seen,
           status: int = 200, reason: str | None = None) -> None:
    """Append the interaction's audit record in ``db``'s transaction."""
    insert(db, rows(trail, db, principal, interaction, seen, status, reason))


def insert(db: Session, sealed: list[AuditRow]) -> None:
    for row in sealed:
        statements(db).insert_audit(db, row)


def rows(trail: AuditTrail, db: Session, principal: Principal, interaction: Interaction, seen: Seen,
         status: int = 200, reason: str | None = None) -> list[AuditRow]:
    """The interaction's audit record, sealed: one row per patient it touched (so each patient's access report
    finds it), one row without a patient when it touched none."""
    now = datetime.now(UTC)
    outcome = outcome_of(status)
    event = _event(principal, interaction, seen, reason)
    return [trail.row(db, Access(principal.network, principal.subject, patient_id, interaction.action, outcome),
                      event, recorded=now)
            for patient_id in sorted(seen.patients.keys() | seen.refused_patients) or [""]]


def _event(principal: Principal, interaction: Interaction, seen: Seen, reason: str | None) -> dict[str, Any]:
    return compact(
        kind=interaction.kind,
        who=f"Practitioner/{principal.subject}" if principal.kind == "user" else f"Device/{principal.subject}",
        organization=principal.organization, role=principal.profession, device=principal.device,
        what=interaction.what,
        bases={**{patient: "refused" for patient in seen.refused_patients}, **seen.patients},
        withheld_resources=seen.withheld_resources, withheld_sections=seen.withheld_sections,
        reason=reason or (seen.refused[-1] if seen.refused else None))
