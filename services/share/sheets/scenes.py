"""What sharing a sheet sets in motion, per care scene (the [sheets] issue's scene rules).

- Discharge: a shared discharge sheet asks the patient's care manager and home physician (from the CareTeam) to
  acknowledge it — a Task each, due by the planned discharge date in the sheet.
- Emergency: one current emergency sheet per patient; a review Task when it is older than the network's period,
  or when a discharge sheet or ACP record changes what it summarises (medication, devices, DNAR and ACP).
- Daily care: the vitals of a note become Observations; out-of-range values flag the note urgent.

Tasks and Observations are written by the server (no principal: the sharer's access was decided on the sheet) in
the sheet's own transaction, under ids derived from what they are about, so a repeated share writes nothing twice.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.share.sheets import answers
from services.share.sheets.records import Member, SheetState
from services.share.store.models import ResourceHead

TASK_CODE = "urn:renkei:codesystem:task-code"
SHEET_FLAG = "urn:renkei:codesystem:sheet-flag"
URGENT = {"system": SHEET_FLAG, "code": "urgent", "display": "至急"}
_IDS = uuid.UUID("0f3b1f8e-7a47-4a53-8f4e-2a6c5d9e1b20")
_MEMBER_TYPES = {"practitioner": "Practitioner", "organization": "Organization",
                 "practitioner-role": "PractitionerRole"}
# Who acknowledges a discharge sheet, and who reviews an emergency sheet (care-team roles, in order of preference).
ACKNOWLEDGERS = ("care-manager", "primary-physician")
REVIEWERS = ("primary-physician", "visiting-nurse", "care-manager")
# What an emergency sheet summarises from each kind of sheet: a change there asks for its review.
SUMMARISED = {"DischargeSheet": ("discharge.medication", "discharge.procedures"),
              "AcpRecord": ("acp.treatment",)}


def derived_id(*parts: str) -> str:
    return uuid.uuid5(_IDS, "\x00".join(parts)).hex


def members_in(members: list[Member], roles: tuple[str, ...]) -> list[dict[str, str]]:
    """References to the patient's current team participants in ``roles``, in the order of ``roles``."""
    now = datetime.now(UTC)
    current = [m for m in members if (m.start is None or m.start <= now) and (m.end is None or now < m.end)]
    found: list[dict[str, str]] = []
    for role in roles:
        for member in current:
            reference = {"reference": f"{_MEMBER_TYPES[member.kind]}/{member.member_id}"}
            if member.role == role and reference not in found:
                found.append(reference)
    return found


def task(code: str, display: str, text: str, sheet_id: str, patient_id: str, owner: dict[str, str] | None,
         requester: str, due: str | None = None, focus_type: str = "QuestionnaireResponse") -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order", "priority": "routine",
        "code": {"coding": [{"system": TASK_CODE, "code": code, "display": display}], "text": display},
        "description": text,
        "focus": {"reference": f"{focus_type}/{sheet_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if requester:
        body["requester"] = {"reference": f"Organization/{requester}"}
    if owner is not None:
        body["owner"] = owner
    if due:
        body["restriction"] = {"period": {"end": due}}
    return body


def acknowledgement_tasks(members: list[Member], sheet_id: str, patient_id: str, sheet: dict[str, Any],
                          requester: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, Task) for each care manager and home physician asked to acknowledge a shared discharge sheet."""
    due = answers.first(sheet, "discharge.basic.discharge-date")
    found = []
    for owner in members_in(members, ACKNOWLEDGERS):
        body = task("acknowledge", "受領確認", "退院時情報共有シートを確認してください / Please acknowledge the "
                    "discharge information sheet", sheet_id, patient_id, owner, requester,
                    due if isinstance(due, str) else None)
        found.append((derived_id(sheet_id, "acknowledge", owner["reference"]), body))
    return found


def review_task(members: list[Member], sheet_id: str, patient_id: str, reason: str, requester: str
                ) -> dict[str, Any]:
    owners = members_in(members, REVIEWERS)
    return task("review", "急変時情報の見直し", reason, sheet_id, patient_id, owners[0] if owners else None, requester)


def changed_reason(kind: str) -> str:
    what = "退院時情報共有シート" if kind == "DischargeSheet" else "人生会議（ACP）記録"
    return (f"{what}の内容（服薬・医療処置・蘇生や治療の希望）が変わりました。急変時情報共有シートを見直してください"
            f" / the {kind} changed what the emergency sheet summarises")


def overdue_reason(days: int) -> str:
    return (f"最終確認から{days}日以上経過しています。急変時情報共有シートを見直してください"
            f" / not reviewed for {days} days or more")


def summarised_change(kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether a discharge sheet or ACP record changed what an emergency sheet summarises: a new one that says
    anything there, or an amendment that changed it."""
    sections = SUMMARISED.get(kind, ())
    if before is None:
        return any(answers.has_answers(answers.section(after, link)) for link in sections)
    return any(_answered(answers.section(before, link)) != _answered(answers.section(after, link))
               for link in sections)


def _answered(section: Any) -> Any:
    """A section's answers by linkId, without what the server stamped (labels) or the client's text."""
    return sorted((str(item.get("linkId")), repr(item.get("answer"))) for item in answers.walk([section])
                  if isinstance(section, dict) and item.get("answer"))


def lock_patient(db: Session, patient_id: str) -> None:
    """Serialise "one current sheet of a kind" checks for one patient (PostgreSQL row lock; SQLite has one writer)."""
    db.execute(select(ResourceHead.version).where(ResourceHead.resource_type == "Patient",
                                                  ResourceHead.resource_id == patient_id).with_for_update())


def review_due(record: SheetState, days: int, now: datetime) -> bool:
    reviewed = record.reviewed_at or record.updated_at
    return not record.review_task and reviewed < now - timedelta(days=days)


def reviewed_at(sheet: dict[str, Any]) -> datetime | None:
    """An emergency sheet's last review date (emergency.review.date), as the start of that day in Japan."""
    value = answers.first(sheet, "emergency.review.date")
    try:
        day = datetime.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None
    return day.replace(tzinfo=UTC) - timedelta(hours=9) if day else None


def server(caller: Any) -> Any:
    """The caller as the server: what it writes on a sheet's behalf is not decided again for the sharer."""
    return replace(caller, principal=None)
