"""Create, read, vread, update, delete and history through the FHIR API, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import httpx
import pytest
from sqlalchemy import event

from tests.fhir_helpers import FHIR_JSON, create, created_id, example, observation, patient, response
from tests.infra import LiveServer, Network, make_network


def test_create_then_read(server: LiveServer, http: httpx.Client, auth: dict[str, str]) -> None:
    answer = create(http, auth, patient())
    assert answer.status_code == 201
    body = answer.json()
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"]
    assert answer.headers["etag"] == 'W/"1"'
    assert answer.headers["location"] == f"{server.base_url}/fhir/Patient/{body['id']}/_history/1"
    assert answer.headers["content-type"].startswith("application/fhir+json")
    read = http.get(f"/fhir/Patient/{body['id']}", headers=auth)
    assert read.status_code == 200
    assert read.json() == body
    assert read.headers["etag"] == 'W/"1"' and read.headers["last-modified"].endswith("GMT")


def test_update_with_if_match_and_stale_version(http: httpx.Client, auth: dict[str, str]) -> None:
    created = create(http, auth, patient()).json()
    changed = {**created, "gender": "female"}
    url = f"/fhir/Patient/{created['id']}"
    ok = http.put(url, json=changed, headers={**auth, **FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200, ok.text
    assert ok.json()["meta"]["versionId"] == "2" and ok.json()["gender"] == "female"
    stale = http.put(url, json=changed, headers={**auth, **FHIR_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert http.get(f"{url}/_history/1", headers=auth).json()["gender"] == "male"
    assert http.get(f"{url}/_history/2", headers=auth).json()["gender"] == "female"
    assert http.get(f"{url}/_history/3", headers=auth).status_code == 404


def test_delete_then_read_is_gone_and_history_keeps_versions(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    url = f"/fhir/Patient/{pid}"
    assert http.delete(url, headers=auth).status_code == 204
    gone = http.get(url, headers=auth)
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert http.delete(url, headers=auth).status_code == 204  # idempotent
    assert http.get(f"{url}/_history/1", headers=auth).status_code == 200
    history = http.get(f"{url}/_history", headers=auth).json()
    assert history["type"] == "history"
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]


def test_type_history_lists_every_version_of_the_network(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    created_id(create(http, auth, response(pid)))
    history = http.get("/fhir/QuestionnaireResponse/_history", headers=auth).json()
    assert len(history["entry"]) == 1
    assert history["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"


def test_prefer_return_minimal_and_outcome(http: httpx.Client, auth: dict[str, str]) -> None:
    minimal = create(http, auth, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    outcome = create(http, auth, patient(), Prefer="return=OperationOutcome")
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_idempotency_key_returns_the_first_result(http: httpx.Client, auth: dict[str, str]) -> None:
    body = patient()
    first = create(http, auth, body, **{"Idempotency-Key": "tablet-retry-1"})
    again = create(http, auth, body, **{"Idempotency-Key": "tablet-retry-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    other = create(http, auth, patient(family="別人"), **{"Idempotency-Key": "tablet-retry-1"})
    assert other.status_code == 422


def test_conditional_create(http: httpx.Client, auth: dict[str, str]) -> None:
    body = patient(identifier="H-0001-ABC")
    first = create(http, auth, body, **{"If-None-Exist": "identifier=urn:oid:1.2.392.100495.20.3.51.1|H-0001-ABC"})
    assert first.status_code == 201
    second = create(http, auth, body, **{"If-None-Exist": "identifier=urn:oid:1.2.392.100495.20.3.51.1|H-0001-ABC"})
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]


def test_other_networks_see_nothing(server: LiveServer, http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    other = make_network(server).bearer("physician")
    assert http.get(f"/fhir/Patient/{pid}", headers=other).status_code == 404
    assert http.get(f"/fhir/Patient/{pid}/_history/1", headers=other).status_code == 404
    assert http.delete(f"/fhir/Patient/{pid}", headers=other).status_code == 404
    assert create(http, other, response(pid)).status_code == 400  # the patient is unknown there


def test_sheet_for_unknown_patient_is_refused(http: httpx.Client, auth: dict[str, str]) -> None:
    answer = create(http, auth, response("no-such-patient"))
    assert answer.status_code == 400
    assert "Patient/no-such-patient" in answer.json()["issue"][0]["diagnostics"]


def test_sheet_for_deleted_patient_is_gone_and_nothing_is_written(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    assert http.delete(f"/fhir/Patient/{pid}", headers=auth).status_code == 204
    answer = create(http, auth, response(pid))
    assert answer.status_code == 410
    assert f"Patient/{pid}" in answer.json()["issue"][0]["diagnostics"]
    found = http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=auth).json()
    assert found.get("entry", []) == []


def test_a_checked_patient_takes_many_sheets(http: httpx.Client, auth: dict[str, str]) -> None:
    # The existence check travels with each insert; every sheet of an existing patient is stored once.
    pid = created_id(create(http, auth, patient()))
    ids = {created_id(create(http, auth, response(pid))) for _ in range(5)}
    found = http.get("/fhir/QuestionnaireResponse", params={"patient": pid, "_count": "10"}, headers=auth).json()
    assert {e["resource"]["id"] for e in found["entry"]} == ids


@pytest.mark.parametrize(
    ("raw", "expression"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"resourceType": "Observation"}', "resourceType"),
        (b'{"resourceType": "Patient", "gender": "bogus"}', "Patient.gender"),
        (b'{"resourceType": "Patient", "birthDate": "1940-13-45"}', "Patient.birthDate"),
        (b'{"resourceType": "Patient", "name": [{"family": 5}]}', "Patient.name[0].family"),
        (b'{"resourceType": "Patient", "unknownElement": true}', None),
        (b"", None),
    ],
)
def test_malformed_bodies_get_a_400_outcome(http: httpx.Client, auth: dict[str, str], raw: bytes,
                                             expression: str | None) -> None:
    answer = http.post("/fhir/Patient", content=raw, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 400, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if expression:
        assert expression in outcome["issue"][0].get("expression", []), outcome


def test_bad_status_binding_on_a_sheet(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    answer = create(http, auth, response(pid, status="bogus"))
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["QuestionnaireResponse.status"]


def test_unsupported_types_media_and_methods(http: httpx.Client, auth: dict[str, str]) -> None:
    assert http.get("/fhir/MedicationRequest", headers=auth).status_code == 404
    assert http.post("/fhir/Patient", content=b"<Patient/>",
                     headers={**auth, "Content-Type": "application/fhir+xml"}).status_code == 415
    assert http.get("/fhir/Patient", headers={**auth, "Accept": "application/fhir+xml"}).status_code == 406
    assert http.get("/fhir/Patient?_format=xml", headers=auth).status_code == 406
    assert http.get("/fhir/Patient?_format=json", headers=auth).status_code == 200
    audit = http.post("/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers={**auth, **FHIR_JSON})
    assert audit.status_code == 405


def test_update_cannot_move_a_sheet_to_another_patient(http: httpx.Client, auth: dict[str, str]) -> None:
    first = created_id(create(http, auth, patient()))
    second = created_id(create(http, auth, patient(family="佐藤")))
    sheet = create(http, auth, response(first)).json()
    moved = {**sheet, "subject": {"reference": f"Patient/{second}"}}
    answer = http.put(f"/fhir/QuestionnaireResponse/{sheet['id']}", json=moved, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 400


def test_metadata_lists_exactly_the_supported_interactions(http: httpx.Client) -> None:
    statement = http.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert "Patient" in resources and "MedicationRequest" not in resources
    assert {i["code"] for i in resources["AuditEvent"]["interaction"]} == {
        "read", "vread", "history-instance", "history-type", "search-type"}
    names = {p["name"] for p in resources["Patient"]["searchParam"]}
    assert {"identifier", "name", "birthdate", "gender", "_id", "_lastUpdated"} <= names


def test_deep_nesting_and_foreign_subjects_are_refused(http: httpx.Client, auth: dict[str, str]) -> None:
    deep: dict[str, object] = {"url": "urn:x", "valueString": "x"}
    for _ in range(300):
        deep = {"url": "urn:x", "extension": [deep]}
    answer = http.post("/fhir/Patient", json={"resourceType": "Patient", "extension": [deep]},
                       headers={**auth, **FHIR_JSON})
    assert answer.status_code == 400
    for subject in ("urn:uuid:6f0c5c0a-52c7-4a53-9b4e-0c0f8b7d2c11", "Group/1", "https://elsewhere.example/x"):
        sheet = response("ignored")
        sheet["subject"] = {"reference": subject}
        answer = create(http, auth, sheet)
        assert answer.status_code == 400, subject
        assert answer.json()["issue"][0]["expression"] == ["QuestionnaireResponse.subject"]


def test_oversized_bodies_are_refused_with_413(http: httpx.Client, auth: dict[str, str]) -> None:
    from services.share.store.validation import MAX_BODY_BYTES

    padding = "x" * (MAX_BODY_BYTES + 10)
    answer = http.post("/fhir/Patient", content=f'{{"resourceType": "Patient", "id": "{padding}"}}'.encode(),
                       headers={**auth, **FHIR_JSON})
    assert answer.status_code == 413
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_creates_skip_the_transaction_only_where_one_statement_writes_them(
    server: LiveServer, http: httpx.Client, auth: dict[str, str]
) -> None:
    """On PostgreSQL an Observation for a patient whose data key exists is one statement that commits by itself, and
    so is a discharge sheet with its record and Tasks; a Patient (its key is new), an emergency sheet (its rules
    lock the patient and read their current sheets first), an idempotent create and anything on SQLite run in a
    transaction. All of them land."""
    db = server.app.state.share.db
    transactions: list[object] = []

    def begun(connection: object) -> None:
        # Not the background work's: the audit chainer's, the event hub's.
        if not threading.current_thread().name.startswith(("renkei-upkeep", "renkei-events")):
            transactions.append(connection)

    def counted(call: object) -> int:
        transactions.clear()
        answer = call()  # type: ignore[operator]
        assert answer.status_code == 201, answer.text
        assert http.get(answer.headers["location"], headers=auth).status_code == 200
        return len(transactions)

    event.listen(db.engine, "begin", begun)
    try:
        pid = created_id(create(http, auth, patient()))
        in_patient = counted(lambda: create(http, auth, patient()))
        in_observation = counted(lambda: create(http, auth, observation(pid)))
        in_sheet = counted(lambda: create(http, auth, response(pid)))
        in_keyed = counted(lambda: create(http, auth, response(pid), **{"Idempotency-Key": f"k-{pid}"}))
        in_emergency = counted(lambda: create(http, auth, example("EmergencySheet", pid)))
    finally:
        event.remove(db.engine, "begin", begun)
    assert in_patient == 1 and in_keyed == 1 and in_emergency == 1
    assert in_observation == in_sheet == (0 if db.single_statement_writes else 1)


def test_only_network_administrators_read_the_audit_trail(server: LiveServer, network: Network) -> None:
    http, physician, admin = server.client(), network.bearer("physician"), network.bearer("admin")
    for path in ("/fhir/AuditEvent", "/fhir/AuditEvent/_history", "/fhir/AuditEvent/x", "/fhir/AuditEvent/x/_history",
                 "/fhir/AuditEvent/x/_history/1"):
        refused = http.get(path, headers=physician)
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome", path
    searched = http.post("/fhir/AuditEvent/_search", headers={**physician,
                         "Content-Type": "application/x-www-form-urlencoded"}, content=b"")
    assert searched.status_code == 403
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "AuditEvent"}}]}
    answered = http.post("/fhir", json=batch, headers={**physician, **FHIR_JSON}).json()
    assert answered["entry"][0]["response"]["status"].startswith("403")
    assert http.get("/fhir/AuditEvent", headers=admin).status_code == 200
    assert http.get("/fhir/AuditEvent/x", headers=admin).status_code == 404


def test_the_capability_statement_names_the_operations_and_where_each_network_publishes_its_policy(
    server: LiveServer, http: httpx.Client
) -> None:
    statement = http.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    operations = {r["type"]: {op["name"] for op in r["operation"]} for r in rest["resource"] if "operation" in r}
    assert operations == {"Patient": {"break-glass", "access-report", "emergency-summary", "crew-report"},
                          "CareTeam": {"invitations", "accept", "approve"},
                          "QuestionnaireResponse": {"document", "diff"}, "Task": {"acknowledge"},
                          "Bundle": {"discharge-draft"}, "Communication": {"read", "read-status"},
                          "Subscription": {"status", "events"}}
    assert f"{server.base_url}/auth/networks/{{network}}/policy" in rest["documentation"]
    assert "consent_required" in rest["documentation"]
