"""The patient-level access report, from the audit log: who accessed a patient's data and when, newest first,
for network administrators only — on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.fhir_helpers import FHIR_JSON, create, created_id, patient
from tests.infra import LiveServer, Network


def break_glass(http: httpx.Client, network: Network, pid: str, reason: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": reason}]}
    answer = http.post(f"/fhir/Patient/{pid}/$break-glass", json=body, headers={**network.bearer("crew"), **FHIR_JSON})
    assert answer.status_code == 200, answer.text


def test_the_report_lists_who_accessed_the_patient_newest_first_a_page_at_a_time(
    server: LiveServer, emergency: Network, network: Network
) -> None:
    http, admin = server.client(), emergency.bearer("admin")
    pid = created_id(create(http, emergency.bearer("physician"), patient()))
    other = created_id(create(http, emergency.bearer("physician"), patient()))
    for n in range(3):
        break_glass(http, emergency, pid, f"搬送 {n}")
    break_glass(http, emergency, other, "別の患者")

    everything = http.get(f"/fhir/Patient/{pid}/$access-report", headers=admin)
    assert everything.status_code == 200, everything.text
    events = [e["resource"] for e in everything.json()["entry"] if "purposeOfEvent" in e["resource"]]
    assert [e["purposeOfEvent"][0]["text"] for e in events] == ["搬送 2", "搬送 1", "搬送 0"]
    assert {e["agent"][0]["who"]["reference"] for e in events} == {f"Practitioner/{emergency.user('crew')['id']}"}
    assert "link" not in everything.json()

    pages, url = [], f"/fhir/Patient/{pid}/$access-report?_count=2"
    while url:
        page = http.get(url, headers=admin).json()
        pages.append([e["resource"] for e in page.get("entry", [])])
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), "")
    assert [event for page in pages for event in page] == [e["resource"] for e in everything.json()["entry"]]
    assert [len(page) for page in pages][:2] == [2, 2]
    # the registration of the patient, before the emergency uses, is on the record too
    assert everything.json()["entry"][-1]["resource"]["subtype"][0]["code"] == "create"

    outsider = http.get(f"/fhir/Patient/{pid}/$access-report", headers=network.bearer("admin"))
    assert outsider.status_code == 200 and outsider.json()["entry"] == []  # another network's admin sees nothing


@pytest.mark.parametrize("query", ["_count=0", "_count=x", "_cursor=yesterday", "_cursor=-1"])
def test_bad_paging_is_a_clear_400(server: LiveServer, emergency: Network, query: str) -> None:
    answer = server.client().get(f"/fhir/Patient/p/$access-report?{query}", headers=emergency.bearer("admin"))
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"


def test_only_administrators_see_the_report(server: LiveServer, emergency: Network) -> None:
    for role in ("physician", "nurse", "crew"):
        answer = server.client().get("/fhir/Patient/p/$access-report", headers=emergency.bearer(role))
        assert answer.status_code == 403, role
