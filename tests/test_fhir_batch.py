"""batch and transaction Bundles at POST /fhir, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.fhir_helpers import FHIR_JSON, create, created_id, patient, response
from tests.infra import LiveServer, Network, make_network

ID_SYSTEM = "urn:oid:1.2.392.100495.20.3.51.1"


def post_bundle(http: httpx.Client, auth: dict[str, str], kind: str, entries: list[dict[str, Any]],
                **headers: str) -> httpx.Response:
    body = {"resourceType": "Bundle", "type": kind, "entry": entries}
    return http.post("/fhir", json=body, headers={**auth, **FHIR_JSON, **headers})


def post(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def put(resource: dict[str, Any], **request: str) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


def get(url: str) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url}}


def delete(url: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": url}}


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def task(patient_ref: str, focus_ref: str) -> dict[str, Any]:
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": patient_ref}, "focus": {"reference": focus_ref},
            "description": "退院前カンファレンスの日程調整"}


def sheet(patient_ref: str) -> dict[str, Any]:
    body = response("placeholder")
    body["subject"] = {"reference": patient_ref}
    return body


def identified(http: httpx.Client, auth: dict[str, str], value: str) -> int:
    answer = http.get("/fhir/Patient", params={"identifier": f"{ID_SYSTEM}|{value}"}, headers=auth)
    assert answer.status_code == 200, answer.text
    return len(answer.json().get("entry", []))


def statuses(answer: httpx.Response) -> list[str]:
    return [e["response"]["status"].split()[0] for e in answer.json()["entry"]]


def outcome_of(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue: dict[str, Any] = body["issue"][0]
    return issue


# Transactions ------------------------------------------------------------------------------------------


def test_transaction_resolves_urn_uuid_references(server: LiveServer, http: httpx.Client,
                                                  auth: dict[str, str]) -> None:
    patient_urn, sheet_urn, task_urn = urn(), urn(), urn()
    value = uuid.uuid4().hex[:12]
    # The sheet and the task come before their patient: the server orders the work, not the client.
    entries = [post(sheet(patient_urn), sheet_urn),
               post(task(patient_urn, sheet_urn), task_urn),
               post(patient(identifier=value), patient_urn)]
    answer = post_bundle(http, auth, "transaction", entries)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction-response"
    assert statuses(answer) == ["201", "201", "201"]
    sheet_entry, task_entry, patient_entry = bundle["entry"]
    pid = patient_entry["resource"]["id"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{server.base_url}/fhir/{resource['resourceType']}/{resource['id']}"
        assert entry["response"]["location"].endswith(f"/{resource['resourceType']}/{resource['id']}/_history/1")
        assert entry["response"]["etag"] == 'W/"1"' and entry["response"]["lastModified"]
    assert sheet_entry["resource"]["subject"]["reference"] == f"Patient/{pid}"
    stored_sheet = http.get(f"/fhir/QuestionnaireResponse/{sheet_entry['resource']['id']}", headers=auth).json()
    assert stored_sheet["subject"]["reference"] == f"Patient/{pid}"
    stored_task = http.get(f"/fhir/Task/{task_entry['resource']['id']}", headers=auth).json()
    assert stored_task["for"]["reference"] == f"Patient/{pid}"
    assert stored_task["focus"]["reference"] == f"QuestionnaireResponse/{sheet_entry['resource']['id']}"
    # The rewritten references are indexed: a patient-scoped search finds the task (and, beside it, the request
    # the shared discharge sheet made of the registering physician, the patient's first team member, to
    # acknowledge it: services/share/sheets/scenes.py).
    found = http.get("/fhir/Task", params={"patient": pid}, headers=auth).json()
    codes = {e["resource"]["id"]: e["resource"].get("code", {}).get("coding", [{}])[0].get("code")
             for e in found["entry"]}
    assert codes.pop(task_entry["resource"]["id"]) is None
    assert list(codes.values()) == ["acknowledge"]
    assert identified(http, auth, value) == 1


def test_transaction_rolls_back_when_one_entry_is_invalid(http: httpx.Client, auth: dict[str, str]) -> None:
    value = uuid.uuid4().hex[:12]
    patient_urn = urn()
    entries = [post(patient(identifier=value), patient_urn),
               post(sheet(patient_urn)),
               post(patient(identifier=value, gender="bogus"))]
    answer = post_bundle(http, auth, "transaction", entries)
    assert answer.status_code == 400, answer.text
    issue = outcome_of(answer)
    assert "Bundle.entry[2]" in issue["diagnostics"]
    assert issue["expression"][0] == "Bundle.entry[2]"
    assert "Bundle.entry[2].resource.gender" in issue["expression"]
    assert identified(http, auth, value) == 0
    sheets = http.get("/fhir/QuestionnaireResponse", headers=auth).json()
    assert not sheets.get("entry")


def test_transaction_if_match_conflict_writes_nothing(http: httpx.Client, auth: dict[str, str]) -> None:
    current = create(http, auth, patient()).json()
    updated = http.put(f"/fhir/Patient/{current['id']}", json={**current, "gender": "female"},
                       headers={**auth, **FHIR_JSON})
    assert updated.status_code == 200
    value = uuid.uuid4().hex[:12]
    stale = {**current, "birthDate": "1941-01-01"}
    answer = post_bundle(http, auth, "transaction",
                         [post(patient(identifier=value)), put(stale, ifMatch='W/"1"')])
    assert answer.status_code == 412, answer.text
    issue = outcome_of(answer)
    assert "Bundle.entry[1]" in issue["diagnostics"] and issue["expression"] == ["Bundle.entry[1]"]
    assert identified(http, auth, value) == 0
    now = http.get(f"/fhir/Patient/{current['id']}", headers=auth).json()
    assert now["meta"]["versionId"] == "2" and now["birthDate"] == current["birthDate"]


def test_transaction_update_delete_and_read(http: httpx.Client, auth: dict[str, str]) -> None:
    keep = create(http, auth, patient()).json()
    doomed = created_id(create(http, auth, patient(family="削除")))
    entries = [get(f"Patient/{keep['id']}"),
               put({**keep, "gender": "female"}, ifMatch='W/"1"'),
               delete(f"Patient/{doomed}")]
    answer = post_bundle(http, auth, "transaction", entries)
    assert answer.status_code == 200, answer.text
    Bundle.model_validate(answer.json())
    assert statuses(answer) == ["200", "200", "204"]
    read, update, _ = answer.json()["entry"]
    # GET runs last in a transaction, so it sees the update.
    assert read["resource"]["gender"] == "female" and read["resource"]["meta"]["versionId"] == "2"
    assert update["response"]["etag"] == 'W/"2"'
    assert http.get(f"/fhir/Patient/{doomed}", headers=auth).status_code == 410


def test_transaction_if_none_exist_reuses_the_match(http: httpx.Client, auth: dict[str, str]) -> None:
    value = uuid.uuid4().hex[:12]
    existing = created_id(create(http, auth, patient(identifier=value)))
    patient_urn = urn()
    entries = [post(patient(identifier=value), patient_urn, ifNoneExist=f"identifier={ID_SYSTEM}|{value}"),
               post(sheet(patient_urn))]
    answer = post_bundle(http, auth, "transaction", entries)
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["200", "201"]
    first, second = answer.json()["entry"]
    assert first["resource"]["id"] == existing
    assert second["resource"]["subject"]["reference"] == f"Patient/{existing}"
    assert identified(http, auth, value) == 1


def test_transaction_refuses_an_unresolved_urn_uuid(http: httpx.Client, auth: dict[str, str]) -> None:
    value = uuid.uuid4().hex[:12]
    answer = post_bundle(http, auth, "transaction",
                         [post(patient(identifier=value), urn()), post(sheet(urn()))])
    assert answer.status_code == 400, answer.text
    issue = outcome_of(answer)
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert "Bundle.entry[1].resource.subject.reference" in issue["expression"]
    assert identified(http, auth, value) == 0


def test_transaction_prefer_minimal(http: httpx.Client, auth: dict[str, str]) -> None:
    answer = post_bundle(http, auth, "transaction", [post(patient())], Prefer="return=minimal")
    assert answer.status_code == 200, answer.text
    entry = answer.json()["entry"][0]
    assert "resource" not in entry and entry["response"]["location"]
    assert http.get(entry["response"]["location"], headers=auth).status_code == 200


# Batches -----------------------------------------------------------------------------------------------


def test_batch_entries_succeed_and_fail_on_their_own(http: httpx.Client, auth: dict[str, str]) -> None:
    current = create(http, auth, patient()).json()
    good, bad_value = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    entries = [post(patient(identifier=good)),
               post(patient(identifier=bad_value, gender="bogus")),
               get("Patient/no-such-patient"),
               put({**current, "gender": "female"}, ifMatch='W/"7"'),
               {"resource": task("Patient/x", "Patient/x"), "request": {"method": "POST", "url": "Patient"}},
               post(sheet("Patient/no-such-patient"))]
    answer = post_bundle(http, auth, "batch", entries)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "batch-response"
    assert statuses(answer) == ["201", "400", "404", "412", "400", "400"]
    failed = bundle["entry"][1]["response"]["outcome"]
    assert failed["resourceType"] == "OperationOutcome"
    assert failed["issue"][0]["expression"] == ["Patient.gender"]
    assert bundle["entry"][3]["response"]["outcome"]["issue"][0]["code"] == "conflict"
    assert identified(http, auth, good) == 1
    assert identified(http, auth, bad_value) == 0
    assert http.get(f"/fhir/Patient/{current['id']}", headers=auth).json()["meta"]["versionId"] == "1"


def test_batch_reads_and_searches(http: httpx.Client, auth: dict[str, str]) -> None:
    family = f"照会{uuid.uuid4().hex[:6]}"
    created = create(http, auth, patient(family=family)).json()
    pid = created["id"]
    entries = [get(f"Patient/{pid}"), get(f"Patient/{pid}/_history/1"), get(f"Patient?name={family}"),
               get(f"Patient?family:exact={family}&_summary=count"), get("Patient?bogus=1"),
               get(f"Patient/{pid}/_history/9")]
    answer = post_bundle(http, auth, "batch", entries)
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["200", "200", "200", "200", "400", "404"]
    read, vread, search, count, _, _ = answer.json()["entry"]
    assert read["resource"] == created and vread["resource"] == created
    assert read["response"]["etag"] == 'W/"1"' and read["response"]["lastModified"]
    assert search["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in search["resource"]["entry"]] == [pid]
    assert count["resource"]["total"] == 1


def test_batch_deletes(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    answer = post_bundle(http, auth, "batch", [delete(f"Patient/{pid}"), delete("Patient/no-such-patient"),
                                               get(f"Patient/{pid}")])
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["204", "404", "410"]
    assert answer.json()["entry"][0]["response"]["etag"] == 'W/"2"'
    assert http.get(f"/fhir/Patient/{pid}", headers=auth).status_code == 410


def test_another_networks_resources(server: LiveServer, http: httpx.Client, auth: dict[str, str]) -> None:
    theirs = create(http, make_network(server).bearer("physician"), patient()).json()
    url = f"Patient/{theirs['id']}"
    answer = post_bundle(http, auth, "batch", [get(url), put(theirs), delete(url), post(sheet(url))])
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["404", "404", "404", "400"]
    value = uuid.uuid4().hex[:12]
    failed = post_bundle(http, auth, "transaction", [post(patient(identifier=value)),
                                                     delete(f"Patient/{theirs['id']}")])
    assert failed.status_code == 404, failed.text
    assert "Bundle.entry[1]" in outcome_of(failed)["diagnostics"]
    assert identified(http, auth, value) == 0


def test_batch_does_not_resolve_urn_uuid_references(http: httpx.Client, auth: dict[str, str]) -> None:
    patient_urn = urn()
    answer = post_bundle(http, auth, "batch", [post(patient(), patient_urn), post(sheet(patient_urn))])
    assert answer.status_code == 200, answer.text
    assert statuses(answer) == ["201", "400"]
    issue = answer.json()["entry"][1]["response"]["outcome"]["issue"][0]
    assert issue["expression"] == ["QuestionnaireResponse.subject.reference"]


def test_batch_prefer_outcome_and_absolute_urls(server: LiveServer, http: httpx.Client,
                                                auth: dict[str, str]) -> None:
    pid = created_id(create(http, auth, patient()))
    answer = post_bundle(http, auth, "batch", [get(f"{server.base_url}/fhir/Patient/{pid}"), post(patient())],
                         Prefer="return=OperationOutcome")
    assert answer.status_code == 200, answer.text
    Bundle.model_validate(answer.json())
    read, created = answer.json()["entry"]
    assert read["resource"]["id"] == pid  # a read answers with the resource whatever Prefer says
    assert "resource" not in created
    assert created["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert created["response"]["location"]


def test_deeply_nested_resources_are_refused(http: httpx.Client, auth: dict[str, str]) -> None:
    inner = '{"url":"http://example.org/x","valueString":"a"}'
    for _ in range(300):
        inner = '{"url":"http://example.org/x","extension":[' + inner + "]}"
    deep = '{"resourceType":"Patient","extension":[' + inner + "]}"
    for kind in ("batch", "transaction"):
        request = '"request":{"method":"POST","url":"Patient"}'
        raw = ('{"resourceType":"Bundle","type":"' + kind + '","entry":[{"resource":' + deep + ","
               + request + "}]}").encode()
        answer = http.post("/fhir", content=raw, headers={**auth, **FHIR_JSON})
        if kind == "batch":
            assert answer.status_code == 200, answer.text
            assert statuses(answer) == ["400"]
        else:
            assert answer.status_code == 400, answer.text
            assert "Bundle.entry[0]" in outcome_of(answer)["diagnostics"]


def test_empty_batch(http: httpx.Client, auth: dict[str, str]) -> None:
    answer = post_bundle(http, auth, "batch", [])
    assert answer.status_code == 200 and answer.json()["type"] == "batch-response"


# Malformed Bundles -------------------------------------------------------------------------------------


def _bundle(kind: str, *entries: Any) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)})


@pytest.mark.parametrize(
    ("raw", "expression"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[]", None),
        (orjson.dumps(patient()), "resourceType"),
        (_bundle("collection"), "Bundle.type"),
        (_bundle("batch", {"resource": patient()}), "Bundle.entry[0].request"),
        (_bundle("transaction", get("Patient"), {"request": {"method": "PATCH", "url": "Patient/1"}}),
         "Bundle.entry[1].request.method"),
        (_bundle("batch", get("MedicationRequest/1")), "Bundle.entry[0].request.url"),
        (_bundle("batch", get("")), "Bundle.entry[0].request.url"),
        (_bundle("batch", {"request": {"method": "GET"}}), "Bundle.entry[0].request.url"),
        (_bundle("batch", get("http://elsewhere.example/fhir/Patient/1")), "Bundle.entry[0].request.url"),
        (_bundle("batch", delete("Patient?identifier=x")), "Bundle.entry[0].request.url"),
        (_bundle("batch", get("Patient/1/_history")), "Bundle.entry[0].request.url"),
        (_bundle("batch", {"request": {"method": "POST", "url": "Patient"}}), "Bundle.entry[0].resource"),
        (_bundle("batch", {"resource": [1], "request": {"method": "POST", "url": "Patient"}}),
         "Bundle.entry[0].resource"),
        (_bundle("batch", {**get("Patient"), "fullUrl": 5}), "Bundle.entry[0].fullUrl"),
        (_bundle("batch", {**get("Patient"), "unknownElement": 1}), None),
        (_bundle("batch", 7), None),
        (orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": {}}), "Bundle.entry"),
        (_bundle("batch", *[get("Patient")] * 1001), "Bundle.entry"),
        (_bundle("transaction", {**post(patient()), "fullUrl": "urn:uuid:1"},
                 {**post(patient()), "fullUrl": "urn:uuid:1"}), "Bundle.entry[1].fullUrl"),
    ],
)
def test_malformed_bundles_get_a_400_outcome(http: httpx.Client, auth: dict[str, str], raw: bytes,
                                             expression: str | None) -> None:
    answer = http.post("/fhir", content=raw, headers={**auth, **FHIR_JSON})
    assert answer.status_code == 400, answer.text
    issue = outcome_of(answer)
    if expression:
        assert expression in issue.get("expression", []), issue


def test_headers_and_media_types(http: httpx.Client, auth: dict[str, str]) -> None:
    body = _bundle("batch", get("Patient"))
    xml = {**auth, "Content-Type": "application/fhir+xml"}
    assert http.post("/fhir", content=body, headers=xml).status_code == 415
    assert http.post("/fhir", content=body, headers=FHIR_JSON).status_code == 401
    assert http.post("/fhir/", content=body, headers={**auth, **FHIR_JSON}).status_code == 200


def test_metadata_lists_batch_and_transaction(http: httpx.Client) -> None:
    statement = http.get("/fhir/metadata").json()
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"batch", "transaction"}


def test_binary_writes_are_refused_inside_bundles(server: LiveServer, network: Network) -> None:
    """Attachment content must go through the blob store, never inline into a row."""
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{
        "request": {"method": "POST", "url": "Binary"},
        "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}}]}
    answer = server.client().post("/fhir", json=bundle,
                                  headers={**network.bearer("physician"), "Content-Type": "application/fhir+json"})
    assert answer.status_code == 400



@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_retried_bundle_with_an_idempotency_key_writes_nothing_twice(http: httpx.Client, auth: dict[str, str],
                                                                       kind: str) -> None:
    number = uuid.uuid4().hex[:10]
    person = patient(identifier=number)
    person["identifier"][0]["system"] = ID_SYSTEM
    entries = [post(person), get("Patient?_count=1")]
    if kind == "batch":
        entries.append(post({"resourceType": "Patient", "gender": "bogus"}))
    key = {"Idempotency-Key": f"tablet-{number}"}
    first = post_bundle(http, auth, kind, entries, **key)
    again = post_bundle(http, auth, kind, entries, **key)
    assert first.status_code == again.status_code == 200, again.text
    assert identified(http, auth, number) == 1
    statuses = [e["response"]["status"] for e in first.json()["entry"]]
    assert [e["response"]["status"] for e in again.json()["entry"]] == statuses
    assert again.json()["entry"][0]["resource"]["id"] == first.json()["entry"][0]["resource"]["id"]
    other = post_bundle(http, auth, kind, [post(patient())], **key)
    assert other.status_code == 422
