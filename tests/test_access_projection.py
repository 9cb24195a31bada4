"""CareTeam and Consent resources written through the FHIR API become the facts access decisions read — at
once, in the same transaction — on SQLite and PostgreSQL; and the rows hold ids, codes and dates only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.share.access.decision import PatientFacts
from services.share.access.models import ConsentTerms, TeamParticipant
from services.share.access.projection import patient_facts
from tests.fhir_helpers import FHIR_JSON, create, created_id, patient
from tests.infra import LiveServer, Network, make_network

ROLE = "urn:renkei:codesystem:care-team-role"
LABEL = "urn:renkei:codesystem:sensitivity-label"
NOW = datetime.now(UTC)


def care_team(pid: str, *participants: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return {"resourceType": "CareTeam", "status": status, "subject": {"reference": f"Patient/{pid}"},
            "participant": list(participants)}


def participant(reference: str, role: str, start: str = "2026-01-01", end: str | None = None) -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {"role": [{"coding": [{"system": ROLE, "code": role}]}], "member": {"reference": reference},
            "period": period}


def consent(pid: str, status: str = "active", *, actors: list[str] = (), excluded: list[str] = (),  # type: ignore[assignment]
            withheld: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    provision: dict[str, Any] = {"type": "permit", "period": {"start": "2026-01-01"}}
    if actors:
        provision["actor"] = [{"role": {"text": "共同利用先"}, "reference": {"reference": f"Organization/{a}"}}
                              for a in actors]
    denials = []
    if excluded:
        denials.append({"type": "deny", "actor": [{"role": {"text": "除外"},
                                                   "reference": {"reference": f"Organization/{o}"}} for o in excluded]})
    if withheld:
        denials.append({"type": "deny", "securityLabel": [{"system": LABEL, "code": c} for c in withheld]})
    if denials:
        provision["provision"] = denials
    return {"resourceType": "Consent", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"}, "dateTime": "2026-01-01T10:00:00+09:00",
            "provision": provision}


@pytest.fixture
def network(server: LiveServer) -> Network:
    """Here a manager's addition takes effect at once (no join approvals): this file is about the projection."""
    return make_network(server, settings={"team_join_approvals": []})


def facts(server: LiveServer, network: Network, pid: str) -> PatientFacts:
    with server.app.state.share.db.sessions() as db:
        return patient_facts(db, network.id, pid, NOW)


def test_a_care_team_becomes_its_participants_and_follows_every_change(
    server: LiveServer, http: httpx.Client, auth: dict[str, str], network: Network
) -> None:
    pid = created_id(create(http, auth, patient()))
    doctor, clinic, station = network.user("physician")["id"], network.orgs["clinic"], network.orgs["station"]
    body = care_team(pid, participant(f"Practitioner/{doctor}", "primary-physician"),
                     participant(f"Organization/{station}", "visiting-nurse"),
                     {"member": {"reference": f"Patient/{pid}"}})  # the patient in their own team: no access row
    team_id = created_id(create(http, auth, body))
    found = facts(server, network, pid)
    assert {(p.kind, p.member, p.role) for p in found.team} == {  # the registrant's team, and this one
        ("practitioner", doctor, "primary-physician"), ("organization", station, "visiting-nurse")}
    assert all(p.active(NOW) for p in found.team), found.team

    ended = (NOW - timedelta(days=1)).date().isoformat()
    body = {**body, "id": team_id, "participant": [participant(f"Organization/{station}", "visiting-nurse", end=ended),
                                                   participant(f"Organization/{clinic}", "primary-physician")]}
    assert http.put(f"/fhir/CareTeam/{team_id}", json=body, headers={**auth, **FHIR_JSON}).status_code == 200
    by_member = {p.member: p for p in facts(server, network, pid).team}
    assert set(by_member) == {doctor, station, clinic}  # the doctor stays, in the team made at registration
    assert not by_member[station].active(NOW) and by_member[clinic].active(NOW)  # ending a period ends access

    suspended = {**body, "status": "suspended"}
    assert http.put(f"/fhir/CareTeam/{team_id}", json=suspended, headers={**auth, **FHIR_JSON}).status_code == 200
    assert [p.member for p in facts(server, network, pid).team] == [doctor]
    assert http.delete(f"/fhir/CareTeam/{team_id}", headers=auth).status_code == 204
    with server.app.state.share.db.sessions() as db:
        assert db.scalars(select(TeamParticipant).where(TeamParticipant.care_team_id == team_id)).all() == []


def test_consents_add_up_and_revoking_one_counts_at_once(
    server: LiveServer, http: httpx.Client, auth: dict[str, str], network: Network
) -> None:
    pid = created_id(create(http, auth, patient()))
    clinic, station, office = network.orgs["clinic"], network.orgs["station"], network.orgs["office"]
    assert not facts(server, network, pid).consent.active

    per_org = created_id(create(http, auth, consent(pid, actors=[clinic])))
    state = facts(server, network, pid).consent
    assert state.covers(clinic) and not state.covers(station)

    wide = consent(pid, excluded=[office], withheld=["mental-health", "social"])
    wide_id = created_id(create(http, auth, wide))
    state = facts(server, network, pid).consent
    assert state.covers(clinic) and state.covers(station) and not state.covers(office)
    assert state.withheld_labels == {"mental-health", "social"}

    revoked = {**wide, "id": wide_id, "status": "inactive"}
    assert http.put(f"/fhir/Consent/{wide_id}", json=revoked, headers={**auth, **FHIR_JSON}).status_code == 200
    state = facts(server, network, pid).consent
    assert state.covers(clinic) and not state.covers(station) and not state.withheld_labels
    assert http.delete(f"/fhir/Consent/{per_org}", headers=auth).status_code == 204
    assert not facts(server, network, pid).consent.active


def test_a_batch_that_fails_leaves_no_team_behind(
    server: LiveServer, http: httpx.Client, auth: dict[str, str], network: Network
) -> None:
    pid = created_id(create(http, auth, patient()))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": care_team(pid, participant(f"Organization/{network.orgs['clinic']}", "primary-physician")),
         "request": {"method": "POST", "url": "CareTeam"}},
        {"resource": {**patient(), "id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}",
                                                          "ifMatch": 'W/"9"'}},  # stale: fails after the team
    ]}
    answer = http.post("/fhir", json=bundle, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 412, answer.text
    assert [p.member for p in facts(server, network, pid).team] == [network.user("physician")["id"]]


def test_the_rows_hold_no_patient_data(
    server: LiveServer, http: httpx.Client, auth: dict[str, str], network: Network
) -> None:
    pid = created_id(create(http, auth, patient(family="秘密野", given="花子")))
    body = care_team(pid, participant(f"Organization/{network.orgs['clinic']}", "primary-physician"))
    body["name"] = "秘密野さんのチーム"
    body["note"] = [{"text": "秘密野さんは夜間に不穏"}]
    create(http, auth, body)
    create(http, auth, consent(pid))
    with server.app.state.share.db.sessions() as db:
        rows = [*db.scalars(select(TeamParticipant).where(TeamParticipant.patient_id == pid)),
                *db.scalars(select(ConsentTerms).where(ConsentTerms.patient_id == pid))]
    text = " ".join(str(vars(row)) for row in rows)
    assert rows and "秘密野" not in text
