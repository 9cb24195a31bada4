"""The four care scenes end to end through the HTTP API, on SQLite and PostgreSQL: a hospital shares a discharge
sheet and the team acknowledges it; the emergency sheet stays single and reviewed and opens for an ambulance crew
with the ACP wishes beside it; ACP discussions pile up as versions, never overwritten; daily notes become
Observations and flag themselves urgent. Plus the template registry, the example sheets and inbound documents."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import update

from services.share.sheets.models import SheetRecord
from services.share.sheets.reviews import raise_overdue_reviews
from tests.fhir_helpers import EXAMPLES, FHIR_JSON, create, created_id, example, patient
from tests.infra import LiveServer, Network
from tests.test_access_rules import add_to_team, consent, open_network

TASK = "urn:renkei:codesystem:task-code"
ISSUE = "urn:renkei:sheet-issue"
LINK_ID = "urn:renkei:extension:link-id"
Json = dict[str, Any]


class Scene:
    """A patient with a full team: the home physician (who registered the patient), a care manager, a visiting
    nurse, a hospital discharge nurse; the patient's consent is given."""

    def __init__(self, server: LiveServer) -> None:
        self.network: Network = open_network(server, extra_users=[
            {"role": "ward", "organization": "hospital", "profession": "nurse"},
            {"role": "crew", "organization": "hospital", "profession": "ems"}])
        self.http = server.client()
        self.doctor, self.manager = self.network.bearer("physician"), self.network.bearer("care_manager")
        self.nurse, self.ward = self.network.bearer("nurse"), self.network.bearer("ward")
        self.pid = created_id(create(self.http, self.doctor, patient()))
        created_id(create(self.http, self.doctor, consent(self.pid)))
        for role, member in (("care-manager", "care_manager"), ("visiting-nurse", "nurse"),
                             ("discharge-nurse", "ward")):
            add_to_team(self.http, self.doctor, self.pid, f"Practitioner/{self.network.user(member)['id']}", role)

    def post(self, who: dict[str, str], body: Json) -> httpx.Response:
        return create(self.http, who, body)

    def put(self, who: dict[str, str], sheet_id: str, body: Json) -> httpx.Response:
        return self.http.put(f"/fhir/QuestionnaireResponse/{sheet_id}", json={**body, "id": sheet_id},
                             headers={**who, **FHIR_JSON})

    def get(self, who: dict[str, str], path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params, headers=who)

    def tasks(self, who: dict[str, str], code: str, **params: str) -> list[Json]:
        found = self.get(who, "/fhir/Task", patient=self.pid, code=f"{TASK}|{code}", **params).json()
        return [entry["resource"] for entry in found.get("entry", [])]

    def user(self, role: str) -> str:
        return f"Practitioner/{self.network.user(role)['id']}"


@pytest.fixture
def scene(server: LiveServer) -> Scene:
    return Scene(server)


def issues(answer: httpx.Response) -> list[tuple[str, str | None]]:
    assert answer.status_code == 422, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    found = []
    for issue in outcome["issue"]:
        link = next((e["valueString"] for e in issue.get("extension", []) if e["url"] == LINK_ID), None)
        assert issue["details"]["text"] and issue["diagnostics"] and issue["expression"]  # Japanese, English, where
        found.append((issue["details"]["coding"][0]["code"], link))
    return sorted(found, key=str)


# Discharge ------------------------------------------------------------------------------------------------


def test_a_discharge_sheet_goes_from_draft_to_shared_to_acknowledged(scene: Scene) -> None:
    sheet = example("DischargeSheet", scene.pid, "stroke-gastrostomy-home", status="in-progress")
    unfinished = {**sheet, "item": [i for i in sheet["item"] if i["linkId"] != "discharge.handovers"]}
    draft = created_id(scene.post(scene.ward, unfinished))  # a draft may be unfinished
    assert scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{draft}").status_code == 404  # the ward's alone
    assert scene.http.delete(f"/fhir/QuestionnaireResponse/{draft}", headers=scene.doctor).status_code == 404
    assert scene.put(scene.doctor, draft, unfinished).status_code == 404
    assert draft not in str(scene.get(scene.manager, "/fhir/QuestionnaireResponse", patient=scene.pid).json())
    assert scene.tasks(scene.ward, "acknowledge") == []
    assert issues(scene.put(scene.ward, draft, {**unfinished, "status": "completed"})) == [
        ("required", "discharge.handovers")]  # a shared sheet must be complete
    assert scene.put(scene.ward, draft, {**sheet, "status": "completed"}).status_code == 200

    assert scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{draft}").status_code == 200
    asked = scene.tasks(scene.ward, "acknowledge", status="requested")
    assert sorted(t["owner"]["reference"] for t in asked) == sorted([scene.user("care_manager"),
                                                                     scene.user("physician")])
    due = next(a["answer"][0]["valueDate"] for s in sheet["item"] for a in s.get("item", [])
               if a["linkId"] == "discharge.basic.discharge-date")
    assert {t["restriction"]["period"]["end"] for t in asked} == {due}
    assert {t["focus"]["reference"] for t in asked} == {f"QuestionnaireResponse/{draft}"}
    overdue_day = (datetime.fromisoformat(due) + timedelta(days=1)).date().isoformat()
    assert len(scene.tasks(scene.ward, "acknowledge", status="requested", due=f"lt{overdue_day}")) == 2
    assert scene.tasks(scene.ward, "acknowledge", status="requested", due=f"lt{due}") == []  # not overdue yet

    mine = next(t for t in asked if t["owner"]["reference"] == scene.user("care_manager"))
    ask = {"resourceType": "Parameters",
           "parameter": [{"name": "question", "valueString": "退院日の送迎は誰が手配しますか"}]}
    assert scene.http.post(f"/fhir/Task/{mine['id']}/$acknowledge", json=ask,
                           headers={**scene.doctor, **FHIR_JSON}).status_code == 403  # not asked of the doctor
    done = scene.http.post(f"/fhir/Task/{mine['id']}/$acknowledge", json=ask, headers={**scene.manager, **FHIR_JSON})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    question = done.json()["output"][0]["valueReference"]["reference"]
    message = scene.get(scene.ward, f"/fhir/{question}").json()
    assert message["payload"][0]["contentString"] == "退院日の送迎は誰が手配しますか"
    assert message["about"] == [{"reference": f"QuestionnaireResponse/{draft}"}]
    assert [t["owner"]["reference"] for t in scene.tasks(scene.ward, "acknowledge", status="requested")] == [
        scene.user("physician")]
    assert scene.http.post(f"/fhir/Task/{mine['id']}/$acknowledge", json={"resourceType": "Parameters"},
                           headers={**scene.manager, **FHIR_JSON}).status_code == 409  # once


def test_a_discharge_sheet_shared_at_once_asks_its_acknowledgements_and_a_review_only_when_one_is_wanted(
        server: LiveServer, scene: Scene) -> None:
    # On PostgreSQL a new sheet with its record and Tasks is one statement, unless a review must be raised too.
    first = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, "stroke-gastrostomy-home")))
    asked = scene.tasks(scene.ward, "acknowledge", status="requested")
    assert sorted(t["owner"]["reference"] for t in asked) == sorted([scene.user("care_manager"),
                                                                     scene.user("physician")])
    assert {t["focus"]["reference"] for t in asked} == {f"QuestionnaireResponse/{first}"}
    assert scene.tasks(scene.doctor, "review") == []  # no emergency sheet to review

    emergency = created_id(scene.post(scene.doctor, example("EmergencySheet", scene.pid)))
    second = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, "terminal-cancer-home")))
    (review,) = scene.tasks(scene.doctor, "review", status="requested")  # its medication is what the sheet sums up
    assert review["focus"]["reference"] == f"QuestionnaireResponse/{emergency}"
    third = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, "stroke-gastrostomy-home")))
    assert [t["id"] for t in scene.tasks(scene.doctor, "review", status="requested")] == [review["id"]]  # still one
    asked = scene.tasks(scene.ward, "acknowledge", status="requested")
    assert sorted(t["focus"]["reference"].rsplit("/", 1)[1] for t in asked) == sorted([first, first, second, second,
                                                                                       third, third])
    with server.app.state.share.db.transaction() as db:
        kinds = {r.resource_id: (r.kind, r.status, r.version) for r in db.query(SheetRecord).filter(
            SheetRecord.patient_id == scene.pid)}
    assert {kinds[i] for i in (first, second, third)} == {("DischargeSheet", "completed", 1)}
    assert kinds[emergency][0] == "EmergencySheet"

    assert scene.http.delete(f"/fhir/Patient/{scene.pid}", headers=scene.doctor).status_code in (200, 204)
    gone = scene.post(scene.ward, example("DischargeSheet", scene.pid, "terminal-cancer-home"))
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"
    with server.app.state.share.db.transaction() as db:
        assert db.query(SheetRecord).filter(SheetRecord.patient_id == scene.pid).count() == len(kinds)


def test_a_shared_sheet_changes_only_as_an_amendment_and_keeps_every_version(scene: Scene) -> None:
    sheet = example("DischargeSheet", scene.pid, "terminal-cancer-home")
    sheet_id = created_id(scene.post(scene.ward, sheet))
    assert issues(scene.put(scene.ward, sheet_id, sheet)) == [("status", None)]  # completed → completed
    changed = json.loads(json.dumps(sheet, ensure_ascii=False).replace("オキシコドン", "ヒドロモルフォン"))
    assert changed != sheet
    assert scene.put(scene.ward, sheet_id, {**changed, "status": "amended"}).status_code == 200
    history = scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{sheet_id}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{sheet_id}/_history/1").status_code == 200
    diff = scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{sheet_id}/$diff").json()
    assert diff["parameter"][:2] == [{"name": "from", "valueInteger": 1}, {"name": "to", "valueInteger": 2}]
    parts = [{p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in c["part"]}
             for c in diff["parameter"][2:]]
    assert parts and all(p["type"] == "changed" and "ヒドロモルフォン" in p["after"] for p in parts)
    assert all(p["linkId"].startswith("discharge.") for p in parts)
    assert scene.put(scene.ward, sheet_id, {**changed, "status": "entered-in-error"}).status_code == 200
    assert issues(scene.put(scene.ward, sheet_id, {**changed, "status": "amended"})) == [("status", None)]


def test_the_discharge_document_follows_the_discharge_summary_shape(scene: Scene) -> None:
    sheet_id = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, "stroke-gastrostomy-home")))
    answer = scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{sheet_id}/$document")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    Bundle.model_validate(document)
    composition = document["entry"][0]["resource"]
    assert document["type"] == "document" and composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0] == {**composition["type"]["coding"][0], "system": "http://loinc.org",
                                                "code": "18842-5"}
    assert composition["subject"]["reference"].endswith(f"Patient/{scene.pid}")
    again = scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{sheet_id}/$document").json()
    assert {**again, "timestamp": None} == {**document, "timestamp": None}  # the same version, the same document
    draft = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, status="in-progress")))
    assert scene.get(scene.ward, f"/fhir/QuestionnaireResponse/{draft}/$document").status_code == 409


def test_an_inbound_discharge_summary_is_stored_with_its_patient_and_prefills_a_draft(scene: Scene) -> None:
    sheet_id = created_id(scene.post(scene.ward, example("DischargeSheet", scene.pid, "stroke-gastrostomy-home")))
    summary = scene.get(scene.ward, f"/fhir/QuestionnaireResponse/{sheet_id}/$document").json()
    inbound = {key: value for key, value in summary.items() if key not in ("id", "meta")}
    stored = created_id(scene.post(scene.ward, inbound))
    assert stored in str(scene.get(scene.manager, "/fhir/Bundle", type="document").json())
    answer = scene.http.post(f"/fhir/Bundle/{stored}/$discharge-draft", headers={**scene.ward, **FHIR_JSON})
    assert answer.status_code == 201, answer.text
    draft = answer.json()
    assert draft["status"] == "in-progress" and draft["subject"]["reference"] == f"Patient/{scene.pid}"
    assert "discharge.basic" in {item["linkId"] for item in draft["item"]}
    assert scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{draft['id']}").status_code == 404  # a draft
    not_a_document = created_id(scene.post(scene.ward, {"resourceType": "Bundle", "type": "collection"}))
    assert scene.http.post(f"/fhir/Bundle/{not_a_document}/$discharge-draft",
                           headers={**scene.ward, **FHIR_JSON}).status_code == 422


# Emergency and ACP ----------------------------------------------------------------------------------------


def test_one_emergency_sheet_reviewed_and_opened_for_the_crew_with_the_acp_wishes(server: LiveServer,
                                                                                  scene: Scene) -> None:
    emergency = example("EmergencySheet", scene.pid, "dementia-fall-dnar")
    sheet_id = created_id(scene.post(scene.doctor, emergency))
    second = scene.post(scene.nurse, example("EmergencySheet", scene.pid, "heart-failure-home-oxygen"))
    assert second.status_code == 409 and sheet_id in second.text  # amend the current one instead
    crew = scene.network.bearer("crew")
    assert scene.get(crew, f"/fhir/Patient/{scene.pid}/$emergency-summary").status_code == 404
    reason = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "心肺停止で搬送中"}]}
    assert scene.http.post(f"/fhir/Patient/{scene.pid}/$break-glass", json=reason,
                           headers={**crew, **FHIR_JSON}).status_code == 200

    summary = scene.get(crew, f"/fhir/Patient/{scene.pid}/$emergency-summary").json()
    Bundle.model_validate(summary)
    sections = {s["code"]["coding"][0]["code"]: s for s in summary["entry"][0]["resource"]["section"]}
    assert "emptyReason" not in sections["dnar"] and "DNAR" in sections["dnar"]["text"]["div"] + "DNAR"
    assert sections["acp"]["emptyReason"]["coding"][0]["code"] == "unavailable"  # no ACP record yet

    full = example("EmergencySheet", scene.pid, "dementia-fall-dnar")  # the example's crew blocks, as a report
    blocks = [item for item in full["item"] if item["linkId"] in ("emergency.call", "emergency.crew")]
    report = {"resourceType": "Parameters", "parameter": [
        {"name": "report", "resource": {"resourceType": "QuestionnaireResponse", "status": "completed",
                                        "item": blocks}},
        {"name": "receiving", "valueReference": {"reference": f"Organization/{scene.network.orgs['hospital']}"}}]}
    reported = scene.http.post(f"/fhir/Patient/{scene.pid}/$crew-report", json=report, headers={**crew, **FHIR_JSON})
    assert reported.status_code == 200, reported.text
    assert reported.json()["status"] == "amended" and reported.json()["meta"]["versionId"] == "2"
    assert scene.get(scene.nurse, f"/fhir/QuestionnaireResponse/{sheet_id}").json()["item"][-1]["linkId"] == \
        "emergency.crew"
    told = scene.get(scene.nurse, "/fhir/Communication", patient=scene.pid).json()["entry"]
    assert [m["resource"]["priority"] for m in told] == ["urgent"]
    wrong = {"resourceType": "Parameters", "parameter": [{"name": "report", "resource": {
        "resourceType": "QuestionnaireResponse", "item": [{"linkId": "emergency.wishes"}]}}]}
    assert scene.http.post(f"/fhir/Patient/{scene.pid}/$crew-report", json=wrong,
                           headers={**crew, **FHIR_JSON}).status_code == 400  # the crew's blocks only
    assert scene.http.post(f"/fhir/Patient/{scene.pid}/$crew-report", json=report,
                           headers={**scene.manager, **FHIR_JSON}).status_code == 403

    acp = created_id(scene.post(scene.doctor, example("AcpRecord", scene.pid, "lung-cancer-first-discussion")))
    review = scene.tasks(scene.doctor, "review", status="requested")
    assert len(review) == 1 and review[0]["focus"]["reference"] == f"QuestionnaireResponse/{sheet_id}"
    summary = scene.get(crew, f"/fhir/Patient/{scene.pid}/$emergency-summary").json()
    sections = {s["code"]["coding"][0]["code"]: s for s in summary["entry"][0]["resource"]["section"]}
    assert "emptyReason" not in sections["acp"] and "emptyReason" not in sections["dnar"]
    assert f"QuestionnaireResponse/{acp}" in json.dumps(summary)

    assert scene.put(scene.doctor, sheet_id, {**emergency, "status": "amended"}).status_code == 200  # reviewed
    assert scene.tasks(scene.doctor, "review", status="requested") == []
    assert scene.tasks(scene.doctor, "review", status="completed")[0]["id"] == review[0]["id"]

    with server.app.state.share.db.transaction() as db:  # 100 days pass without a review
        db.execute(update(SheetRecord).where(SheetRecord.resource_id == sheet_id)
                   .values(reviewed_at=datetime.now(UTC) - timedelta(days=100)))
    assert scene.get(crew, f"/fhir/Patient/{scene.pid}/$emergency-summary").status_code == 200
    overdue = scene.tasks(scene.doctor, "review", status="requested")
    assert len(overdue) == 1 and "90" in overdue[0]["description"]


def test_the_review_pass_raises_one_task_for_an_old_emergency_sheet_nobody_opened(server: LiveServer,
                                                                                   scene: Scene) -> None:
    sheet_id = created_id(scene.post(scene.doctor, example("EmergencySheet", scene.pid)))
    share = server.app.state.share
    later = datetime.now(UTC) + timedelta(days=91)
    assert raise_overdue_reviews(share) == 0 or scene.tasks(scene.doctor, "review") == []  # not due yet
    assert scene.tasks(scene.doctor, "review") == []
    assert raise_overdue_reviews(share, now=later) >= 1  # other tests' sheets may be due too
    assert raise_overdue_reviews(share, now=later) == 0  # one open review per sheet, whoever runs the pass
    (review,) = scene.tasks(scene.doctor, "review", status="requested")
    assert review["focus"]["reference"] == f"QuestionnaireResponse/{sheet_id}"
    assert review["owner"]["reference"] == scene.user("physician")  # the primary physician reviews


def test_acp_discussions_are_versions_of_one_record_never_overwritten(scene: Scene) -> None:
    first = example("AcpRecord", scene.pid, "lung-cancer-first-discussion")
    record = created_id(scene.post(scene.doctor, first))
    rival = scene.post(scene.nurse, example("AcpRecord", scene.pid, "lung-cancer-revised-discussion"))
    assert rival.status_code == 409 and record in rival.text
    revised = example("AcpRecord", scene.pid, "lung-cancer-revised-discussion", status="amended")
    assert scene.put(scene.doctor, record, revised).status_code == 200
    current = scene.get(scene.manager, "/fhir/QuestionnaireResponse", patient=scene.pid,
                        questionnaire="urn:renkei:questionnaire:AcpRecord", status="completed,amended").json()
    assert [e["resource"]["id"] for e in current["entry"]] == [record]
    assert current["entry"][0]["resource"]["item"] == scene.get(
        scene.manager, f"/fhir/QuestionnaireResponse/{record}/_history/2").json()["item"]
    history = scene.get(scene.manager, f"/fhir/QuestionnaireResponse/{record}/_history").json()
    dates = [next(a["answer"][0]["valueDate"] for s in e["resource"]["item"] for a in s.get("item", [])
                  if a["linkId"] == "acp.discussion.date") for e in history["entry"]]
    assert len(dates) == 2 and dates[0] > dates[1]  # each discussion kept with its own date


# Daily care ----------------------------------------------------------------------------------------------


def test_a_daily_note_becomes_observations_and_flags_itself_urgent(scene: Scene) -> None:
    fever = example("DailyCareNote", scene.pid, "fever-low-spo2-gastrostomy")
    note = scene.post(scene.nurse, fever)
    assert note.status_code == 201, note.text
    assert {"system": "urn:renkei:codesystem:sheet-flag", "code": "urgent", "display": "至急"} in note.json()[
        "meta"]["tag"]
    calm = scene.post(scene.nurse, example("DailyCareNote", scene.pid, "normal-vitals-dementia")).json()
    assert "tag" not in calm["meta"]
    found = scene.get(scene.doctor, "/fhir/Observation", patient=scene.pid, code="http://loinc.org|8310-5").json()
    temperatures = sorted((e["resource"]["valueQuantity"]["value"], e["resource"]["interpretation"][0]["coding"][0][
        "code"]) for e in found["entry"])
    assert temperatures[-1] == (38.6, "HH") and len(temperatures) == 2
    fever_obs = next(e["resource"] for e in found["entry"] if e["resource"]["valueQuantity"]["value"] == 38.6)
    assert fever_obs["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{note.json()['id']}"}]
    cooler = json.loads(json.dumps(fever).replace('"valueDecimal": 38.6', '"valueDecimal": 37.2'))
    assert scene.put(scene.nurse, note.json()["id"], {**cooler, "status": "amended"}).status_code == 200
    again = scene.get(scene.doctor, f"/fhir/Observation/{fever_obs['id']}").json()
    assert again["valueQuantity"]["value"] == 37.2 and again["meta"]["versionId"] == "2"  # the same Observation


# Templates and examples ----------------------------------------------------------------------------------


def test_templates_are_found_by_name_and_a_network_registers_its_own_variant(scene: Scene) -> None:
    found = scene.get(scene.nurse, "/fhir/Questionnaire", name="DischargeSheet").json()
    assert [(e["resource"]["url"], e["resource"]["version"]) for e in found["entry"]] == [
        ("urn:renkei:questionnaire:DischargeSheet", "1.0.0")]
    shipped = found["entry"][0]["resource"]
    admin = scene.network.bearer("admin")
    assert scene.http.put(f"/fhir/Questionnaire/{shipped['id']}", json=shipped,
                          headers={**admin, **FHIR_JSON}).status_code == 403
    variant = {key: value for key, value in shipped.items() if key not in ("id", "meta")}
    variant.update(url="https://region.example/fhir/Questionnaire/DailyCareNote", version="2026-osaka",
                   name="DailyCareNote", derivedFrom=["urn:renkei:questionnaire:DailyCareNote|1.0.0"])
    variant["code"] = [{"system": "urn:renkei:codesystem:sheet-kind", "code": "DailyCareNote"}]
    variant["item"] = json.loads(json.dumps(
        json.loads((Path(__file__).parent.parent / "schemas/questionnaires/DailyCareNote.json").read_text())["item"]))
    assert scene.post(scene.nurse, variant).status_code == 403  # a network administrator's
    registered = scene.post(admin, variant)
    assert registered.status_code == 201, registered.text
    assert scene.post(admin, variant).status_code == 409  # the same url|version twice
    note = example("DailyCareNote", scene.pid)
    note["questionnaire"] = "https://region.example/fhir/Questionnaire/DailyCareNote|2026-osaka"
    assert scene.post(scene.nurse, note).status_code == 201
    changed = {**registered.json(), "item": registered.json()["item"][:3]}
    assert scene.http.put(f"/fhir/Questionnaire/{changed['id']}", json=changed,
                          headers={**admin, **FHIR_JSON}).status_code == 409  # in use: a new version instead
    broken = {**variant, "version": "broken", "item": [{"linkId": "x", "text": "項目", "type": "string"}]}
    assert scene.post(admin, broken).status_code == 422
    unknown = {**note, "questionnaire": "https://region.example/fhir/Questionnaire/DailyCareNote|9"}
    assert issues(scene.post(scene.nurse, unknown)) == [("wrong-questionnaire", None)]


INVALID = sorted(EXAMPLES.glob("*/invalid-*.json"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_invalid_example_is_refused_with_its_issues_and_stores_nothing(scene: Scene, path: Path) -> None:
    expected = json.loads((EXAMPLES / "expected-issues.json").read_text())[f"{path.parent.name}/{path.name}"]
    body = json.loads(path.read_text())
    body["subject"] = {"reference": f"Patient/{scene.pid}"}
    assert issues(scene.post(scene.doctor, body)) == sorted(((i["code"], i["linkId"]) for i in expected), key=str)
    assert scene.get(scene.doctor, "/fhir/QuestionnaireResponse", patient=scene.pid).json().get("entry", []) == []
