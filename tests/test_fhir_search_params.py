"""Every search parameter the issue names, per resource type, against resources created through the API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fhir_helpers import create, created_id, patient, response
from tests.infra import Network


def found(http: httpx.Client, auth: dict[str, str], resource_type: str, **params: str) -> set[str]:
    answer = http.get(f"/fhir/{resource_type}", params=params, headers=auth)
    assert answer.status_code == 200, answer.text
    return {e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"}


def coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


ROLE = "urn:renkei:codesystem:care-team-role"


def test_care_team_consent_params(http: httpx.Client, auth: dict[str, str], network: Network) -> None:
    pid = created_id(create(http, auth, patient()))
    doctor = network.user("physician")["id"]
    (registered,) = found(http, auth, "CareTeam", patient=pid)  # the team registration made
    team = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "CareTeam",
                "status": "active",
                "subject": {"reference": f"Patient/{pid}"},
                "participant": [
                    {"role": [coding(ROLE, "primary-physician")], "member": {"reference": f"Practitioner/{doctor}"}},
                    {"member": {"reference": f"Organization/{network.orgs['station']}"}},
                ],
            },
        )
    )
    created_id(
        create(
            http, auth, {"resourceType": "CareTeam", "status": "inactive", "subject": {"reference": f"Patient/{pid}"}}
        )
    )
    assert team in found(http, auth, "CareTeam", patient=pid, status="active")
    assert found(http, auth, "CareTeam", patient=pid, status="active") == {team, registered}
    assert found(http, auth, "CareTeam", participant=f"Practitioner/{doctor}") == {team, registered}
    assert found(http, auth, "CareTeam", participant=f"Organization/{network.orgs['station']}") == {team}
    consent = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Consent",
                "status": "active",
                "patient": {"reference": f"Patient/{pid}"},
                "scope": coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
                "category": [coding("http://loinc.org", "59284-0")],
            },
        )
    )
    assert found(http, auth, "Consent", patient=pid) == {consent}
    assert found(http, auth, "Consent", patient=pid, status="active") == {consent}
    assert found(http, auth, "Consent", patient=pid, status="inactive") == set()


def test_questionnaire_response_author(http: httpx.Client, auth: dict[str, str], network: Network) -> None:
    pid = created_id(create(http, auth, patient()))
    doctor = network.user("physician")["id"]
    sheet = response(pid)
    sheet["author"] = {"reference": f"Practitioner/{doctor}"}
    mine = created_id(create(http, auth, sheet))
    created_id(create(http, auth, {**response(pid), "author": {"reference": "Organization/another"}}))
    assert found(http, auth, "QuestionnaireResponse", author=f"Practitioner/{doctor}") == {mine}
    assert found(http, auth, "QuestionnaireResponse", author=doctor) == {mine}


def test_communication_params(http: httpx.Client, auth: dict[str, str], network: Network) -> None:
    pid = created_id(create(http, auth, patient()))
    nurse = network.user("nurse")["id"]
    category = "urn:renkei:codesystem:message-category"
    urgent = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Communication",
                "status": "completed",
                "subject": {"reference": f"Patient/{pid}"},
                "sent": "2026-11-20T10:00:00+09:00",
                "priority": "urgent",
                "category": [coding(category, "urgent")],
                "recipient": [{"reference": f"Practitioner/{nurse}"}],
                "payload": [{"contentString": "発熱あり"}],
            },
        )
    )
    routine = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Communication",
                "status": "completed",
                "subject": {"reference": f"Patient/{pid}"},
                "sent": "2026-11-10T10:00:00+09:00",
                "priority": "routine",
                "category": [coding(category, "daily")],
            },
        )
    )
    assert found(http, auth, "Communication", patient=pid) == {urgent, routine}
    assert found(http, auth, "Communication", patient=pid, priority="urgent") == {urgent}
    assert found(http, auth, "Communication", category=f"{category}|daily") == {routine}
    assert found(http, auth, "Communication", recipient=f"Practitioner/{nurse}") == {urgent}
    assert found(http, auth, "Communication", patient=pid, sent="ge2026-11-15") == {urgent}


def test_task_params(http: httpx.Client, auth: dict[str, str], network: Network) -> None:
    pid = created_id(create(http, auth, patient()))
    # A draft: a shared discharge sheet would ask for acknowledgements of its own (sheets/scenes.py).
    sheet = created_id(create(http, auth, response(pid, status="in-progress")))
    manager = network.user("care_manager")["id"]
    task_code = "urn:renkei:codesystem:task-code"
    ack = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Task",
                "status": "requested",
                "intent": "order",
                "for": {"reference": f"Patient/{pid}"},
                "focus": {"reference": f"QuestionnaireResponse/{sheet}"},
                "owner": {"reference": f"Practitioner/{manager}"},
                "code": coding(task_code, "acknowledge"),
            },
        )
    )
    created_id(
        create(
            http,
            auth,
            {"resourceType": "Task", "status": "completed", "intent": "order", "for": {"reference": f"Patient/{pid}"}},
        )
    )
    assert found(http, auth, "Task", patient=pid, status="requested") == {ack}
    assert found(http, auth, "Task", owner=f"Practitioner/{manager}") == {ack}
    assert found(http, auth, "Task", focus=sheet) == {ack}
    assert found(http, auth, "Task", code="acknowledge") == {ack}
    revinclude = http.get(
        "/fhir/QuestionnaireResponse", params={"_id": sheet, "_revinclude": "Task:focus"}, headers=auth
    ).json()
    assert {e["resource"]["id"] for e in revinclude["entry"] if e["search"]["mode"] == "include"} == {ack}


def test_observation_and_document_reference_params(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    loinc = "http://loinc.org"
    temperature = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "code": coding(loinc, "8310-5"),
                "effectiveDateTime": "2026-11-21T08:30:00+09:00",
                "valueQuantity": {"value": 37.8, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
            },
        )
    )
    pressure = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "code": coding(loinc, "85354-9"),
                "effectivePeriod": {"start": "2026-11-01", "end": "2026-11-02"},
            },
        )
    )
    assert found(http, auth, "Observation", patient=pid, code=f"{loinc}|8310-5") == {temperature}
    assert found(http, auth, "Observation", patient=pid, date="2026-11-21") == {temperature}
    assert found(http, auth, "Observation", patient=pid, date="lt2026-11-10") == {pressure}
    photo = created_id(
        create(
            http,
            auth,
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": f"Patient/{pid}"},
                "type": coding(loinc, "72170-4"),
                "content": [{"attachment": {"contentType": "image/jpeg", "url": "Binary/x"}}],
            },
        )
    )
    assert found(http, auth, "DocumentReference", patient=pid) == {photo}
    assert found(http, auth, "DocumentReference", patient=pid, type=f"{loinc}|72170-4") == {photo}
    assert found(http, auth, "DocumentReference", patient=pid, type="other") == set()
