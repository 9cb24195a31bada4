"""The access rules at their edges, through the live API on SQLite and PostgreSQL: other networks, a membership
that ends, a consent revoked, a break-the-glass grant that expires, system clients outside their scopes or their
patients — and the audit record each interaction leaves, refusals included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from services.share.access.models import BreakGlassGrant
from tests.fhir_helpers import FHIR_JSON, create, created_id, example, patient, response
from tests.infra import LiveServer, Network, make_network
from tests.planted import register_secret
from tests.test_clients import ClientKey, request_token

ROLE = "urn:renkei:codesystem:care-team-role"


def consent(pid: str, status: str = "active") -> dict[str, Any]:
    return {"resourceType": "Consent", "status": status, "scope": {"text": "patient-privacy"},
            "category": [{"text": "共同利用への同意"}], "patient": {"reference": f"Patient/{pid}"},
            "dateTime": "2026-01-01T10:00:00+09:00", "provision": {"type": "permit"}}


def add_to_team(http: httpx.Client, auth: dict[str, str], pid: str, member: str, role: str = "visiting-nurse",
                end: str | None = None) -> dict[str, Any]:
    (team,) = [e["resource"] for e in http.get("/fhir/CareTeam", params={"patient": pid},
                                               headers=auth).json()["entry"]]
    period = {"start": "2026-01-01", **({"end": end} if end else {})}
    team["participant"] = [p for p in team["participant"] if p["member"]["reference"] != member]
    team["participant"].append({"role": [{"coding": [{"system": ROLE, "code": role}]}],
                                "member": {"reference": member}, "period": period})
    answer = http.put(f"/fhir/CareTeam/{team['id']}", json=team, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 200, answer.text
    return team


def open_network(server: LiveServer, **kwargs: Any) -> Network:
    return make_network(server, settings={"team_join_approvals": []}, **kwargs)


def test_other_networks_never_learn_a_patient_exists(server: LiveServer) -> None:
    http, home, away = server.client(), open_network(server), open_network(server)
    doctor, stranger = home.bearer("physician"), away.bearer("physician")
    pid = created_id(create(http, doctor, patient()))
    sheet = created_id(create(http, doctor, response(pid)))
    for url in (f"/fhir/Patient/{pid}", f"/fhir/QuestionnaireResponse/{sheet}",
                f"/fhir/QuestionnaireResponse/{sheet}/_history/1", f"/fhir/Patient/{pid}/_history"):
        assert http.get(url, headers=stranger).status_code == 404, url
    found = http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=stranger).json()
    assert found.get("entry", []) == []
    refused = create(http, stranger, response(pid))
    missing = create(http, stranger, response("no-such-patient"))
    assert refused.status_code == missing.status_code == 400
    assert refused.json()["issue"][0]["details"] == {
        **missing.json()["issue"][0]["details"], "text": refused.json()["issue"][0]["details"]["text"]}
    assert http.delete(f"/fhir/QuestionnaireResponse/{sheet}", headers=stranger).status_code == 404
    assert http.get(f"/fhir/Patient/{pid}/$access-report", headers=away.bearer("admin")).json()["entry"] == []


def test_ending_membership_and_revoking_consent_count_from_the_next_request(server: LiveServer) -> None:
    network = open_network(server)
    http, doctor, nurse = server.client(), network.bearer("physician"), network.bearer("nurse")
    pid = created_id(create(http, doctor, patient()))
    sheet = created_id(create(http, doctor, response(pid)))
    member = f"Practitioner/{network.user('nurse')['id']}"
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404  # not in the team
    add_to_team(http, doctor, pid, member)
    # In the team, but without consent: only what the nurse's own organisation wrote.
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404
    own = created_id(create(http, nurse, response(pid, note="訪問看護の記録")))
    assert http.get(f"/fhir/QuestionnaireResponse/{own}", headers=nurse).status_code == 200
    listed = http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=nurse).json()
    assert {e["resource"]["id"] for e in listed["entry"]} == {own}

    given = created_id(create(http, doctor, consent(pid)))
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 200
    revoked = {**consent(pid, "inactive"), "id": given}
    assert http.put(f"/fhir/Consent/{given}", json=revoked, headers={**doctor, **FHIR_JSON}).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404
    assert http.get(f"/fhir/QuestionnaireResponse/{own}", headers=nurse).status_code == 200  # still their own

    assert http.put(f"/fhir/Consent/{given}", json={**consent(pid), "id": given},
                    headers={**doctor, **FHIR_JSON}).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 200
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    add_to_team(http, doctor, pid, member, end=yesterday)
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404
    assert http.get(f"/fhir/QuestionnaireResponse/{own}", headers=nurse).status_code == 404


def test_break_the_glass_opens_the_emergency_sheet_only_and_only_until_it_expires(server: LiveServer) -> None:
    network = open_network(server, extra_users=[{"role": "crew", "organization": "hospital", "profession": "ems"}])
    http, doctor, crew = server.client(), network.bearer("physician"), network.bearer("crew")
    pid = created_id(create(http, doctor, patient()))
    created_id(create(http, doctor, consent(pid)))
    emergency = created_id(create(http, doctor, example("EmergencySheet", pid)))
    discharge = created_id(create(http, doctor, response(pid)))
    vitals = created_id(create(http, doctor, {"resourceType": "Observation", "status": "final",
                                              "code": {"text": "体温"}, "subject": {"reference": f"Patient/{pid}"}}))
    assert http.get(f"/fhir/QuestionnaireResponse/{emergency}", headers=crew).status_code == 404
    granted = http.post(f"/fhir/Patient/{pid}/$break-glass", headers={**crew, **FHIR_JSON},
                        json={"resourceType": "Parameters", "parameter": [{"name": "reason",
                                                                          "valueString": "心肺停止で搬送中"}]})
    assert granted.status_code == 200, granted.text
    assert http.get(f"/fhir/QuestionnaireResponse/{emergency}", headers=crew).status_code == 200
    assert http.get(f"/fhir/Patient/{pid}", headers=crew).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{discharge}", headers=crew).status_code == 403
    assert http.get(f"/fhir/Observation/{vitals}", headers=crew).status_code == 404
    listed = http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=crew).json()
    assert {e["resource"]["id"] for e in listed["entry"]} == {emergency}
    assert create(http, crew, response(pid)).status_code == 400  # read only: as if there were no such patient

    with server.app.state.share.db.transaction() as db:  # the grant's two hours pass
        db.execute(update(BreakGlassGrant).where(BreakGlassGrant.patient_id == pid)
                   .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert http.get(f"/fhir/QuestionnaireResponse/{emergency}", headers=crew).status_code == 404
    assert http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=crew).json().get("entry",
                                                                                                     []) == []


def system_token(server: LiveServer, network: Network, client_id: str, key: ClientKey, scope: str) -> dict[str, str]:
    import time
    import uuid

    now = int(time.time())
    assertion = key.sign({"iss": client_id, "sub": client_id, "aud": server.settings.token_endpoint, "iat": now,
                          "exp": now + 240, "jti": uuid.uuid4().hex})
    answer = request_token(server, assertion, scope=scope)
    assert answer.status_code == 200, answer.text
    register_secret("system access token", answer.json()["access_token"])
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_system_clients_act_within_their_scopes_and_their_patients(server: LiveServer) -> None:
    key = ClientKey.generate("ES384")
    network = open_network(server, clients=[{"client_id": "ehr-matrix", "organization": "hospital",
                                             "jwks": {"keys": [key.public_jwk()]},
                                             "scope": "system/Patient.crs system/QuestionnaireResponse.cruds"}])
    http, doctor = server.client(), network.bearer("physician")
    ehr = system_token(server, network, "ehr-matrix", key, "system/Patient.crs system/QuestionnaireResponse.cruds")
    narrow = system_token(server, network, "ehr-matrix", key, "system/Patient.rs")
    pid = created_id(create(http, doctor, patient()))
    created_id(create(http, doctor, consent(pid)))
    sheet = created_id(create(http, doctor, response(pid)))
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=ehr).status_code == 404  # not their patient
    add_to_team(http, doctor, pid, f"Organization/{network.orgs['hospital']}", role="discharge-nurse")
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=ehr).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=narrow).status_code == 403  # outside its scopes
    assert create(http, narrow, response(pid)).status_code == 403
    assert create(http, ehr, response(pid)).status_code == 201
    assert create(http, ehr, {"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
                              "subject": {"reference": f"Patient/{pid}"}}).status_code == 403
    # A patient the client registers has its organisation in the team from the start.
    own = created_id(create(http, ehr, patient()))
    assert http.get(f"/fhir/Patient/{own}", headers=ehr).status_code == 200


def test_every_interaction_and_every_refusal_is_audited(server: LiveServer) -> None:
    network = open_network(server)
    http, doctor, nurse, admin = (server.client(), network.bearer("physician"), network.bearer("nurse"),
                                  network.bearer("admin"))
    pid = created_id(create(http, doctor, patient()))
    sheet = created_id(create(http, doctor, response(pid)))
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=doctor).status_code == 200
    assert http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=doctor).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=nurse).status_code == 404

    def events(**query: str) -> list[dict[str, Any]]:
        answer = http.get("/fhir/AuditEvent", params=query, headers=admin)
        assert answer.status_code == 200, answer.text
        return [e["resource"] for e in answer.json().get("entry", [])]

    mine = events(patient=pid, agent=f"Practitioner/{network.user('physician')['id']}")
    kinds = [(e["subtype"][0]["code"], e["outcome"]) for e in mine]
    assert kinds[:4] == [("search-type", "0"), ("read", "0"), ("create", "0"), ("create", "0")]
    search = mine[0]
    basis = [{"type": "basis", "valueString": "own-organization"}]  # no consent: what the clinic wrote
    assert {"what": {"reference": f"Patient/{pid}"}, "detail": basis} in search["entity"]
    assert search["agent"][0]["extension"][0]["valueReference"]["reference"] == f"Organization/{network.orgs['clinic']}"
    (denied,) = events(patient=pid, agent=network.user("nurse")["id"])
    assert denied["outcome"] == "4" and denied["subtype"][0]["code"] == "read" and "outcomeDesc" in denied
    today = datetime.now(UTC).date().isoformat()
    assert len(events(patient=pid, date=f"ge{today}")) == len(events(patient=pid)) >= 5
    assert events(patient=pid, date="lt2020-01-01") == []
    assert http.get(f"/fhir/AuditEvent/{denied['id']}", headers=admin).json() == denied
    assert http.get(f"/fhir/AuditEvent/{denied['id']}", headers=doctor).status_code == 403
    assert http.get("/fhir/AuditEvent", params={"what": "x"}, headers=admin).status_code == 400
    assert http.get("/fhir/AuditEvent", params={"date": "yesterday"}, headers=admin).status_code == 400


def care_worker_on_team(server: LiveServer) -> tuple[httpx.Client, dict[str, str], dict[str, str], str]:
    """A network with a care worker ("helper") on the team of a consenting patient: (client, physician's and
    helper's headers, patient id)."""
    network = open_network(server, extra_users=[{"role": "helper", "organization": "office",
                                                 "profession": "care-worker"}])
    http, doctor, helper = server.client(), network.bearer("physician"), network.bearer("helper")
    pid = created_id(create(http, doctor, patient()))
    created_id(create(http, doctor, consent(pid)))
    add_to_team(http, doctor, pid, f"Practitioner/{network.user('helper')['id']}")
    return http, doctor, helper, pid


def test_a_sheet_section_takes_its_label_from_the_template_not_from_the_client(server: LiveServer) -> None:
    http, doctor, helper, pid = care_worker_on_team(server)
    mild = {"url": "urn:renkei:extension:sensitivity-label",
            "valueCoding": {"system": "urn:renkei:codesystem:sensitivity-label", "code": "general"}}
    note = {**response(pid), "questionnaire": "urn:renkei:questionnaire:DailyCareNote|1.0.0", "item": [
        {"linkId": "daily.visit", "text": "記録", "item": [
            {"linkId": "daily.visit.time", "text": "記録日時",
             "answer": [{"valueDateTime": "2026-11-20T10:00:00+09:00"}]}]},
        # Vital signs are a nursing section in the template: the client's milder label does not stand.
        {"linkId": "daily.vitals", "text": "バイタルサイン", "extension": [mild],
         "item": [{"linkId": "daily.vitals.spo2", "text": "SpO2", "answer": [{"valueInteger": 91}]}]},
        # Meals are a care section: labelled although the client gave no label at all.
        {"linkId": "daily.intake", "text": "食事・水分",
         "item": [{"linkId": "daily.intake.notes", "text": "食事", "answer": [{"valueString": "全量摂取"}]}]},
    ]}
    sheet = created_id(create(http, doctor, note))
    stored = http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=doctor).json()
    labels = {item["linkId"]: [e["valueCoding"]["code"] for e in item["extension"]] for item in stored["item"]}
    assert labels == {"daily.visit": ["general"], "daily.vitals": ["nursing"], "daily.intake": ["care"]}
    seen = http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=helper).json()
    shown = {item["linkId"]: item for item in seen["item"]}
    assert "91" not in str(shown["daily.vitals"]) and "answer" not in str(shown["daily.vitals"])
    assert "全量摂取" in str(shown["daily.intake"])
