"""Joining a care team by invitation, through the live API on SQLite and PostgreSQL: access starts only when every
approval the network requires is in, each step is visible to the inviter, and ending a period ends access."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fhir_helpers import FHIR_JSON, create, created_id, patient, response
from tests.infra import LiveServer, Network, make_network

ROLE = "urn:renkei:codesystem:care-team-role"


def consenting(http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    body = {"resourceType": "Consent", "status": "active", "scope": {"text": "patient-privacy"},
            "category": [{"text": "共同利用への同意"}], "patient": {"reference": f"Patient/{pid}"},
            "dateTime": "2026-01-01T10:00:00+09:00", "provision": {"type": "permit"}}
    created_id(create(http, auth, body))


def team_with(http: httpx.Client, auth: dict[str, str], pid: str, *members: tuple[str, str],
              end: str | None = None) -> str:
    (registered,) = [e["resource"] for e in http.get("/fhir/CareTeam", params={"patient": pid},
                                                     headers=auth).json()["entry"]]
    period = {"start": "2026-01-01", **({"end": end} if end else {})}
    registered["participant"] += [{"role": [{"coding": [{"system": ROLE, "code": role}]}],
                                   "member": {"reference": member}, "period": period} for member, role in members]
    answer = http.put(f"/fhir/CareTeam/{registered['id']}", json=registered, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 200, answer.text
    return str(registered["id"])


def steps(http: httpx.Client, auth: dict[str, str], team: str) -> dict[str, str]:
    answer = http.get(f"/fhir/CareTeam/{team}/$invitations", headers=auth)
    assert answer.status_code == 200, answer.text
    found = {}
    for invitation in answer.json().get("parameter", []):
        parts = {p["name"]: p for p in invitation["part"]}
        found[parts["member"]["valueReference"]["reference"]] = parts["status"]["valueCode"]
    return found


def operation(http: httpx.Client, auth: dict[str, str], team: str, name: str, **values: str) -> httpx.Response:
    parameters: list[dict[str, Any]] = [
        {"name": k, "valueReference": {"reference": v}} if k == "member" else {"name": k, "valueString": v}
        for k, v in values.items()]
    return http.post(f"/fhir/CareTeam/{team}/${name}", json={"resourceType": "Parameters", "parameter": parameters},
                     headers={**auth, **FHIR_JSON})


def test_access_starts_when_every_approval_is_in(server: LiveServer) -> None:
    network = make_network(server, settings={"team_join_approvals": ["invitee", "organization", "patient"]},
                           extra_users=[{"role": "station-admin", "organization": "station", "profession": "nurse",
                                         "org_admin": True}])
    http = server.client()
    doctor, nurse = network.bearer("physician"), network.bearer("nurse")
    pid = created_id(create(http, doctor, patient()))
    consenting(http, doctor, pid)
    sheet = created_id(create(http, doctor, response(pid)))
    member = f"Practitioner/{network.user('nurse')['id']}"
    team = team_with(http, doctor, pid, (member, "visiting-nurse"))

    assert steps(http, doctor, team) == {member: "waiting-for-invitee"}
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404
    mine = http.get("/fhir/$invitations", headers=nurse).json()
    assert [p["valueCode"] for p in mine["parameter"][0]["part"] if p["name"] == "status"] == ["waiting-for-invitee"]

    # Only the invitee accepts; the organisation approves after, by its administrator only.
    assert operation(http, doctor, team, "accept", member=member).status_code == 403
    early = operation(http, network.bearer("station-admin"), team, "approve", member=member, approval="organization")
    assert early.status_code == 409, early.text
    assert operation(http, nurse, team, "accept").status_code == 200
    assert steps(http, doctor, team) == {member: "waiting-for-organization"}
    assert operation(http, nurse, team, "approve", member=member, approval="organization").status_code == 403
    approved = operation(http, network.bearer("station-admin"), team, "approve", member=member,
                         approval="organization")
    assert approved.status_code == 200, approved.text
    assert steps(http, doctor, team) == {member: "waiting-for-patient"}
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404

    # A manager records the patient's approval; a non-manager may not.
    assert operation(http, nurse, team, "approve", member=member, approval="patient").status_code == 403
    done = operation(http, doctor, team, "approve", member=member, approval="patient", note="口頭で同意を確認")
    assert done.status_code == 200, done.text
    assert steps(http, doctor, team) == {member: "active"}
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 200
    assert operation(http, doctor, team, "approve", member=member, approval="patient").status_code == 409

    # Ending the participant's period ends access at once.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    body = http.get(f"/fhir/CareTeam/{team}", headers=doctor).json()
    body["participant"][-1]["period"]["end"] = yesterday
    assert http.put(f"/fhir/CareTeam/{team}", json=body, headers={**doctor, **FHIR_JSON}).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404


def test_an_organisation_joins_and_an_empty_approval_list_means_at_once(server: LiveServer) -> None:
    network = make_network(server, settings={"team_join_approvals": []})
    http = server.client()
    doctor, manager = network.bearer("physician"), network.bearer("care_manager")
    pid = created_id(create(http, doctor, patient()))
    consenting(http, doctor, pid)
    sheet = created_id(create(http, doctor, response(pid)))
    team = team_with(http, doctor, pid, (f"Organization/{network.orgs['office']}", "care-manager"))
    assert steps(http, doctor, team) == {}
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=manager).status_code == 200


def test_only_managers_change_the_team_and_see_its_invitations(server: LiveServer, network: Network) -> None:
    http = server.client()
    doctor, nurse = network.bearer("physician"), network.bearer("nurse")
    pid = created_id(create(http, doctor, patient()))
    member = f"Practitioner/{network.user('nurse')['id']}"
    team = team_with(http, doctor, pid, (member, "visiting-nurse"))
    assert steps(http, doctor, team) == {member: "waiting-for-invitee"}  # the default: invitee, organisation
    assert operation(http, nurse, team, "accept").status_code == 200
    # Until the organisation approves, the nurse is not in the team: the team is not known to them.
    assert http.get(f"/fhir/CareTeam/{team}/$invitations", headers=nurse).status_code == 404
    assert http.get(f"/fhir/CareTeam/{team}/$invitations", headers=network.bearer("admin")).status_code == 200
    body = http.get(f"/fhir/CareTeam/{team}", headers=doctor).json()
    assert http.put(f"/fhir/CareTeam/{team}", json=body, headers={**nurse, **FHIR_JSON}).status_code == 404
    bad = operation(http, doctor, team, "approve", member=member, approval="everyone")
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert operation(http, doctor, team, "accept", member="nobody").status_code == 400
    assert operation(http, doctor, "no-such-team", "accept", member=member).status_code == 404
