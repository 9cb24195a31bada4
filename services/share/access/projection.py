"""CareTeam and Consent resources, projected into the rows access decisions read (models.py), and read back as
the facts of one patient (decision.PatientFacts).

A CareTeam participant is a user (``Practitioner/<user id>``), a PractitionerRole or a whole organisation
(``Organization/<id>``), with a role from urn:renkei:codesystem:care-team-role and a period. A Consent is active
for sharing within the team when its status is ``active`` and today is inside its provision's period; its terms:

- no ``provision.actor``: every organisation of the team (consent once for the whole network); otherwise only the
  organisations it lists (per listed organisation, or one Consent per organisation as it joins);
- nested ``deny`` provisions: organisations excluded (``actor``) and sensitivity labels withheld
  (``securityLabel`` codes of urn:renkei:codesystem:sensitivity-label).

Several active Consents add up; an exclusion or a withheld label in any of them wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from services.kit.codes import CARE_TEAM_ROLE, SENSITIVITY_LABEL
from services.share.access.decision import ConsentState, Participant, PatientFacts, within
from services.share.access.invitations import settle
from services.share.access.models import ConsentTerms, TeamParticipant
from services.share.store.params import date_range
from services.share.store.statements import statements
from services.share.store.types import reference_target

PROJECTED = frozenset({"CareTeam", "Consent"})
# Session.info entry: the PatientFacts decisions in this session have read (services/share/access/gate.py).
FACTS_CACHE = "renkei.access.facts"
_MEMBER_KINDS = {
    "Practitioner": "practitioner", "Organization": "organization", "PractitionerRole": "practitioner-role",
}


def project(db: Session, network_id: str, resource_type: str, resource_id: str, patient_id: str | None,
            body: dict[str, Any] | None, *, approvals: tuple[str, ...] = (), actor: str = "") -> None:
    """Rewrite the rows of one CareTeam or Consent (``body`` None: it was deleted). In the caller's transaction.

    A participant new to the team holds access only once the ``approvals`` its network requires are in (an
    invitation opened here, in ``actor``'s name); one already approved stays so across versions of the team."""
    db.info.pop(FACTS_CACHE, None)  # decisions later in this session read the new rows
    if resource_type == "CareTeam":
        approved_before = {(kind, member) for kind, member in db.execute(
            select(TeamParticipant.kind, TeamParticipant.member_id).where(
                TeamParticipant.care_team_id == resource_id, TeamParticipant.approved.is_(True)))}
        db.execute(delete(TeamParticipant).where(TeamParticipant.care_team_id == resource_id))
        rows = list(team_rows(network_id, resource_id, patient_id, body)) if body and patient_id else []
        if rows:
            assert patient_id is not None
            pending = settle(db, network_id, resource_id, patient_id, rows, approved_before,
                                         approvals, actor)
            for row in rows:
                row["approved"] = (row["kind"], row["member_id"]) not in pending
            db.execute(insert(TeamParticipant), rows)
    elif resource_type == "Consent":
        db.execute(delete(ConsentTerms).where(ConsentTerms.consent_id == resource_id))
        if body and patient_id:
            db.execute(insert(ConsentTerms).values(consent_terms(network_id, resource_id, patient_id, body)))


def team_rows(network_id: str, care_team_id: str, patient_id: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for position, participant in enumerate(body.get("participant") or []):
        target = reference_target(participant.get("member"))
        if target is None or target[0] not in _MEMBER_KINDS:
            continue  # a Patient or RelatedPerson in the team is shown, but holds no access through it
        start, end = _period(participant.get("period"))
        yield {
            "care_team_id": care_team_id, "position": position, "network_id": network_id, "patient_id": patient_id,
            "team_status": str(body.get("status") or ""), "kind": _MEMBER_KINDS[target[0]], "member_id": target[1],
            "role": _code(participant.get("role") or [], CARE_TEAM_ROLE), "start": start, "end": end,
        }


def consent_terms(network_id: str, consent_id: str, patient_id: str, body: dict[str, Any]) -> dict[str, Any]:
    provision = body.get("provision") or {}
    start, end = _period(provision.get("period"))
    listed = _organizations(provision.get("actor") or [])
    excluded: set[str] = set()
    withheld: set[str] = set()
    for nested in provision.get("provision") or []:
        if nested.get("type") != "deny":
            continue
        excluded |= set(_organizations(nested.get("actor") or []))
        withheld |= {c["code"] for c in nested.get("securityLabel") or []
                     if c.get("system") == SENSITIVITY_LABEL and c.get("code")}
    return {
        "consent_id": consent_id, "network_id": network_id, "patient_id": patient_id,
        "status": str(body.get("status") or ""), "start": start, "end": end,
        "organizations": sorted(listed) if listed else None,
        "excluded_organizations": sorted(excluded), "withheld_labels": sorted(withheld),
    }


def patient_facts(db: Session, network_id: str, patient_id: str, now: datetime,
                  subject: str | None = None) -> PatientFacts:
    """The patient's team (participants of their active CareTeams) and their consent, as of ``now``; with
    ``subject``, that user's unexpired break-the-glass grant for the patient too."""
    return many_patient_facts(db, network_id, [patient_id], now, subject)[patient_id]


def many_patient_facts(db: Session, network_id: str, patient_ids: list[str], now: datetime,
                       subject: str | None = None) -> dict[str, PatientFacts]:
    """patient_facts of several patients (a search page's), in one statement whatever their number."""
    wanted = sorted(set(patient_ids))
    rows = statements(db).access_facts(db, network_id, wanted, subject or "", now)
    return facts_from_rows(network_id, wanted, rows, now)


def facts_from_rows(network_id: str, wanted: list[str], rows: list[tuple[Any, ...]],
                    now: datetime) -> dict[str, PatientFacts]:
    """PatientFacts from Statements.access_facts rows (or the same rows read along with a page)."""
    teams: dict[str, list[Participant]] = {p: [] for p in wanted}
    terms: dict[str, list[Terms]] = {p: [] for p in wanted}
    glass: dict[str, datetime] = {}
    for row in rows:
        patient, what, start, end = row[0], row[1], row[5], row[6]
        if what == "t":
            teams[patient].append(Participant(row[2], row[3], row[4], start, end, approved=bool(row[7])))
        elif what == "c" and within(start, end, now):
            terms[patient].append(Terms(_json(row[8]), _json(row[9]) or [], _json(row[10]) or []))
        elif what == "g":
            glass[patient] = max(end, glass.get(patient, end))
    return {p: PatientFacts(network_id, p, tuple(teams[p]), combined_consent(terms[p]), glass.get(p))
            for p in wanted}


def _json(value: Any) -> Any:
    """A JSON column as its value: text from a plain query, already decoded when it came inside JSON."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True)
class Terms:
    """One active Consent's terms (a ConsentTerms row, as decisions need it)."""

    organizations: list[str] | None
    excluded_organizations: list[str]
    withheld_labels: list[str]


def combined_consent(terms: list[Terms]) -> ConsentState:
    if not terms:
        return ConsentState(active=False)
    listed = [set(t.organizations) for t in terms if t.organizations is not None]
    everyone = any(t.organizations is None for t in terms)
    return ConsentState(
        active=True,
        organizations=None if everyone else frozenset().union(*listed),
        excluded_organizations=frozenset().union(*(t.excluded_organizations for t in terms)),
        withheld_labels=frozenset().union(*(t.withheld_labels for t in terms)),
    )


def _period(period: Any) -> tuple[datetime | None, datetime | None]:
    """A FHIR Period as instants: from the start of its ``start`` to the end of its ``end`` (a date's whole day)."""
    if not isinstance(period, dict):
        return None, None
    start = date_range(period["start"]) if isinstance(period.get("start"), str) else None
    end = date_range(period["end"]) if isinstance(period.get("end"), str) else None
    return (start[0] if start else None), (end[1] if end else None)


def _code(concepts: list[Any], system: str) -> str:
    for concept in concepts:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("system") == system and coding.get("code"):
                return str(coding["code"])
    return ""


def _organizations(actors: list[Any]) -> list[str]:
    found = []
    for actor in actors:
        target = reference_target((actor or {}).get("reference"))
        if target and target[0] == "Organization":
            found.append(target[1])
    return found
