"""Sheets become FHIR documents a hospital or an ambulance crew can read, and a hospital's discharge summary
prefills a discharge sheet: the Bundles validate, sections come in the right order with the right codes, withheld
sections show nothing, the same sheet version gives the same bytes, and answers cannot inject markup."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from services.kit.settings import REPO_ROOT
from services.share.access.layout import marker
from services.share.sheets.documents import (
    JP_CLINS_SECTION,
    SHEET_SECTION,
    emergency_summary,
    sheet_document,
)
from services.share.sheets.inbound import discharge_draft
from services.share.sheets.validation import validate_response
from services.share.store.types import binding_errors

SHIPPED = REPO_ROOT / "schemas" / "questionnaires"
EXAMPLES = REPO_ROOT / "schemas" / "examples"
BASE = "https://renkei.example.jp/fhir"
NOW = "2026-12-02T10:00:00+09:00"
LATER = "2026-12-03T08:30:00+09:00"
Json = dict[str, Any]

LOINC = "http://loinc.org"
COURSE = "抗菌薬で改善。\n嚥下評価ののちペースト食で再開。<script>alert(1)</script>"
PRESCRIPTIONS = ["ドネペジル錠5mg 1錠 朝食後", "酸化マグネシウム錠330mg 2錠 朝夕食後"]
PATIENT: Json = {"resourceType": "Patient", "id": "p1", "name": [{"text": "山田 花子"}], "gender": "female",
                 "birthDate": "1938-04-12"}


def template(name: str) -> Json:
    data: Json = orjson.loads((SHIPPED / f"{name}.json").read_bytes())
    return data


def option(tpl: Json, link_id: str, code: str, *, display: bool = True) -> Json:
    """An answer coding from the template's own options (without its display, to see the template's used)."""
    pending = list(tpl["item"])
    while pending:
        node = pending.pop()
        if node["linkId"] == link_id:
            coding = next(o["valueCoding"] for o in node["answerOption"] if o["valueCoding"]["code"] == code)
            kept = {k: v for k, v in coding.items() if display or k != "display"}
            return {"valueCoding": kept}
        pending += node.get("item", [])
    raise KeyError(link_id)


def q(link_id: str, *answers: Json) -> Json:
    return {"linkId": link_id, "answer": list(answers)}


def g(link_id: str, *items: Json) -> Json:
    return {"linkId": link_id, "item": list(items)}


def text(value: str) -> Json:
    return {"valueString": value}


def response(tpl: Json, sheet_id: str, authored: str, *items: Json) -> Json:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": sheet_id,
        "questionnaire": f"{tpl['url']}|{tpl['version']}",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": authored,
        "author": {"reference": "Practitioner/pr1", "display": "退院調整看護師 佐藤"},
        "item": list(items),
    }


def discharge_sheet() -> tuple[Json, Json]:
    tpl = template("DischargeSheet")
    return tpl, response(
        tpl, "ds-1", "2026-11-28T15:00:00+09:00",
        g(
            "discharge.basic",
            q("discharge.basic.hospital", text("みどり総合病院")),
            q("discharge.basic.ward", text("4階東病棟")),
            q("discharge.basic.admission-date", {"valueDate": "2026-11-02"}),
            q("discharge.basic.discharge-date", {"valueDate": "2026-11-27"}),
            q("discharge.basic.care-level", option(tpl, "discharge.basic.care-level", "care-3", display=False)),
        ),
        g(
            "discharge.medical",
            q("discharge.medical.cause", text("誤嚥性肺炎")),
            g(
                "discharge.medical.diagnosis",
                q("discharge.medical.diagnosis.name", text("誤嚥性肺炎")),
                q("discharge.medical.diagnosis.onset", {"valueDate": "2026-11-01"}),
                q("discharge.medical.diagnosis.under-treatment", {"valueBoolean": False}),
            ),
            g(
                "discharge.medical.diagnosis",
                q("discharge.medical.diagnosis.name", text("アルツハイマー型認知症")),
                q("discharge.medical.diagnosis.under-treatment", {"valueBoolean": True}),
                q("discharge.medical.diagnosis.stable", {"valueBoolean": True}),
            ),
            q("discharge.medical.course", text(COURSE)),
        ),
        g(
            "discharge.state",
            q("discharge.state.meal-form", option(tpl, "discharge.state.meal-form", "paste")),
            q("discharge.state.swallowing-problem", {"valueBoolean": True}),
        ),
        g(
            "discharge.medication",
            q("discharge.medication.prescribed", *map(text, PRESCRIPTIONS)),
            q("discharge.medication.manager", option(tpl, "discharge.medication.manager", "family")),
        ),
        g("discharge.prognosis", q("discharge.prognosis.text", text("再誤嚥のおそれがある"))),
        g(
            "discharge.handovers",
            g(
                "discharge.handovers.entry",
                q("discharge.handovers.entry.number", {"valueInteger": 1}),
                q("discharge.handovers.entry.date", {"valueDate": "2026-11-20"}),
                q("discharge.handovers.entry.method", option(tpl, "discharge.handovers.entry.method", "conference")),
                q("discharge.handovers.entry.profession", option(tpl, "discharge.handovers.entry.profession", "nurse")),
                q("discharge.handovers.entry.informant", text("佐藤 看護師")),
            ),
        ),
    )


def emergency_sheet() -> tuple[Json, Json]:
    tpl = template("EmergencySheet")
    return tpl, response(
        tpl, "em-1", "2026-11-20T11:00:00+09:00",
        g(
            "emergency.identity",
            q("emergency.identity.name", text("山田 花子")),
            q("emergency.identity.kana", text("ヤマダ ハナコ")),
            q("emergency.identity.birth-date", {"valueDate": "1938-04-12"}),
            q("emergency.identity.sex", option(tpl, "emergency.identity.sex", "female")),
            q("emergency.identity.address", text("東京都架空区緑町1-2-3")),
        ),
        g(
            "emergency.contacts",
            g(
                "emergency.contacts.person",
                q("emergency.contacts.person.name", text("山田 一郎")),
                q("emergency.contacts.person.relation", text("長男")),
                q("emergency.contacts.person.phone", text("090-0000-0001")),
            ),
        ),
        g(
            "emergency.team",
            g(
                "emergency.team.primary",
                q("emergency.team.primary.name", text("みどり在宅クリニック 緑川医師")),
                q("emergency.team.primary.phone-24h", text("03-0000-0003")),
            ),
            g("emergency.team.back-bed", q("emergency.team.back-bed.name", text("みどり総合病院"))),
        ),
        g("emergency.medical", q("emergency.medical.diagnoses", text("アルツハイマー型認知症"))),
        g(
            "emergency.medications",
            q("emergency.medications.current", text("ドネペジル錠5mg")),
            q("emergency.medications.has-allergy", {"valueBoolean": True}),
            g("emergency.medications.allergy", q("emergency.medications.allergy.substance", text("ペニシリン"))),
        ),
        g("emergency.baseline", q("emergency.baseline.can-talk", {"valueBoolean": True})),
        g(
            "emergency.wishes",
            g(
                "emergency.wishes.dnar",
                q("emergency.wishes.dnar.ordered", {"valueBoolean": True}),
                q("emergency.wishes.dnar.physician", text("緑川 医師")),
                q("emergency.wishes.dnar.date", {"valueDate": "2026-10-01"}),
            ),
            q("emergency.wishes.destination", text("みどり総合病院")),
        ),
        g(
            "emergency.review",
            q("emergency.review.date", {"valueDate": "2026-11-20"}),
            q("emergency.review.by", text("訪問看護師 青木")),
        ),
    )


def acp_record() -> tuple[Json, Json]:
    tpl = template("AcpRecord")
    return tpl, response(
        tpl, "acp-1", "2026-10-15T14:00:00+09:00",
        g(
            "acp.discussion",
            q("acp.discussion.date", {"valueDate": "2026-10-15"}),
            g(
                "acp.discussion.participant",
                q("acp.discussion.participant.kind", option(tpl, "acp.discussion.participant.kind", "patient")),
                q("acp.discussion.participant.name", text("山田 花子")),
            ),
        ),
        g("acp.place", q("acp.place.death", option(tpl, "acp.place.death", "home"))),
        g(
            "acp.treatment",
            q("acp.treatment.ventilator", option(tpl, "acp.treatment.ventilator", "not-want")),
            q("acp.treatment.hospital-transfer", option(tpl, "acp.treatment.hospital-transfer", "undecided")),
        ),
        g(
            "acp.surrogate",
            q("acp.surrogate.named", {"valueBoolean": True}),
            q("acp.surrogate.name", text("山田 一郎")),
            q("acp.surrogate.phone", text("090-0000-0001")),
        ),
        g("acp.views", q("acp.views.patient", text("できるだけ家で過ごしたい"))),
    )


def valid_fhir(bundle: Json) -> None:
    """The Bundle, each entry's resource by its own model, and the status codes: Bundle.model_validate alone
    takes any dict with a resourceType as an entry's resource, and no model checks a code's value set."""
    Bundle.model_validate(bundle)
    assert binding_errors("Bundle", bundle) == []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert binding_errors(resource["resourceType"], resource) == []


def composition(bundle: Json) -> Json:
    first: Json = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Composition"
    return first


def section_codes(bundle: Json) -> list[tuple[str, str]]:
    return [(s["code"]["coding"][0]["system"], s["code"]["coding"][0]["code"]) for s in composition(bundle)["section"]]


def section(bundle: Json, code: str) -> Json:
    return next(s for s in composition(bundle)["section"] if s["code"]["coding"][0]["code"] == code)


def discharge_document(sheet: Json | None = None, version: int = 2, timestamp: str = NOW) -> Json:
    tpl, built = discharge_sheet()
    return sheet_document(sheet or built, tpl, sheet_id="ds-1", version=version, patient=PATIENT, base=BASE,
                          timestamp=timestamp)


@pytest.mark.parametrize("build", [discharge_sheet, emergency_sheet, acp_record])
def test_the_test_sheets_are_valid_against_their_templates(build: Any) -> None:
    tpl, sheet = build()
    assert validate_response(sheet, tpl) == []


def test_a_discharge_sheet_is_a_valid_document_with_the_composition_first() -> None:
    bundle = discharge_document()
    valid_fhir(bundle)
    assert (bundle["type"], bundle["timestamp"]) == ("document", NOW)
    assert bundle["identifier"]["value"] == f"urn:uuid:{bundle['id']}"
    head = composition(bundle)
    assert head["type"]["coding"][0] == {"system": LOINC, "code": "18842-5", "display": "Discharge summary"}
    assert head["title"] == "退院時情報共有シート（退院・退所情報記録書）"
    assert (head["status"], head["date"]) == ("final", "2026-11-28T15:00:00+09:00")
    assert head["subject"] == {"reference": f"{BASE}/Patient/p1"}
    assert head["author"] == [{"reference": f"{BASE}/Practitioner/pr1", "display": "退院調整看護師 佐藤"}]
    kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert kinds[:3] == ["Composition", "Patient", "QuestionnaireResponse"]
    assert kinds.count("Condition") == 2 and kinds.count("MedicationStatement") == 2 and "Encounter" in kinds


def test_discharge_sections_follow_the_template_with_jp_clins_codes() -> None:
    bundle = discharge_document()
    tpl, _ = discharge_sheet()
    assert [s["title"] for s in composition(bundle)["section"]] == [group["text"] for group in tpl["item"]]
    assert section_codes(bundle) == [
        (JP_CLINS_SECTION, "324"), (JP_CLINS_SECTION, "333"), (JP_CLINS_SECTION, "614"),
        (SHEET_SECTION, "discharge.mental"), (SHEET_SECTION, "discharge.understanding"), (JP_CLINS_SECTION, "424"),
        (SHEET_SECTION, "discharge.rehabilitation"), (SHEET_SECTION, "discharge.precautions"),
        (JP_CLINS_SECTION, "444"), (SHEET_SECTION, "discharge.prognosis"), (SHEET_SECTION, "discharge.requirements"),
        (SHEET_SECTION, "discharge.handovers"),
    ]


def test_the_stay_is_an_encounter_referenced_by_the_composition() -> None:
    bundle = discharge_document()
    head = composition(bundle)
    by_url = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    encounter = by_url[head["encounter"]["reference"]]
    assert encounter["period"] == {"start": "2026-11-02", "end": "2026-11-27"} == head["event"][0]["period"]
    assert encounter["serviceProvider"] == {"display": "みどり総合病院"}
    assert encounter["status"] == "finished"
    medical = section(bundle, "333")
    conditions = [by_url[e["reference"]] for e in medical["entry"] if by_url.get(e["reference"], {}).get(
        "resourceType") == "Condition"]
    assert [c["code"]["text"] for c in conditions] == ["誤嚥性肺炎", "アルツハイマー型認知症"]


def test_the_narrative_shows_answers_in_japanese_with_coding_displays() -> None:
    div = section(discharge_document(), "324")["text"]["div"]
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert "<li>医療機関名: みどり総合病院</li>" in div
    assert "退院時の要介護度: 要介護3" in div  # the answer had no display: the template's is shown
    assert "<li>義歯" not in section(discharge_document(), "614")["text"]["div"]  # unanswered questions are left out


def test_markup_in_an_answer_is_escaped() -> None:
    bundle = discharge_document()
    div = section(bundle, "333")["text"]["div"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in div and "<script>" not in div
    assert "抗菌薬で改善。<br/>嚥下評価" in div
    valid_fhir(bundle)


def test_unanswered_sections_are_empty_with_a_reason() -> None:
    empty = section(discharge_document(), "discharge.mental")
    assert empty["emptyReason"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}
    assert "entry" not in empty and empty["text"]["div"]


def test_a_withheld_section_shows_no_content() -> None:
    _, sheet = discharge_sheet()
    sheet["item"][1] = orjson.loads(marker("medical", "discharge.medical"))
    bundle = discharge_document(sheet)
    valid_fhir(bundle)
    withheld = section(bundle, "333")
    assert withheld["emptyReason"]["coding"][0]["code"] == "withheld"
    assert "閲覧権限" in withheld["text"]["div"]
    dumped = orjson.dumps(bundle).decode()
    assert "誤嚥性肺炎" not in dumped and "抗菌薬" not in dumped
    assert all(entry["resource"]["resourceType"] != "Condition" for entry in bundle["entry"])


def test_the_same_version_gives_the_same_bytes_and_another_version_other_ids() -> None:
    first, again = discharge_document(), discharge_document()
    assert orjson.dumps(first) == orjson.dumps(again)
    later = discharge_document(timestamp=LATER)
    assert later["timestamp"] == LATER
    assert orjson.dumps({**later, "timestamp": NOW}) == orjson.dumps(first)
    other = discharge_document(version=3)
    assert other["id"] != first["id"]
    assert composition(other)["id"] != composition(first)["id"]
    generated = {e["fullUrl"] for e in first["entry"] if e["fullUrl"].startswith("urn:uuid:")}
    assert generated and not generated & {e["fullUrl"] for e in other["entry"]}
    # The newer version's document says which one it replaces.
    assert composition(other)["relatesTo"][0]["targetIdentifier"] == composition(first)["identifier"]


@pytest.mark.parametrize(("build", "loinc"), [(emergency_sheet, "60591-5"), (acp_record, "81334-5")])
def test_other_sheets_are_documents_of_their_kind(build: Any, loinc: str) -> None:
    tpl, sheet = build()
    bundle = sheet_document(sheet, tpl, sheet_id=sheet["id"], version=1, patient=None, base=BASE, timestamp=NOW)
    valid_fhir(bundle)
    codings = composition(bundle)["type"]["coding"]
    assert codings[0] == {"system": "urn:renkei:codesystem:sheet-kind", "code": tpl["name"], "display": tpl["title"]}
    assert codings[1]["code"] == loinc
    assert {system for system, _ in section_codes(bundle)} == {SHEET_SECTION}
    assert [code for _, code in section_codes(bundle)] == [group["linkId"] for group in tpl["item"]]
    assert composition(bundle)["subject"] == {"reference": f"{BASE}/Patient/p1"}


def summary(emergency: Json | None, acp: Json | None, timestamp: str = NOW) -> Json:
    ids = {"EmergencySheet": ("em-1", 4), "AcpRecord": ("acp-1", 2)}
    templates = {"EmergencySheet": template("EmergencySheet"), "AcpRecord": template("AcpRecord")}
    return emergency_summary(emergency, acp, templates=templates, patient=PATIENT, ids=ids, base=BASE,
                             timestamp=timestamp)


def test_the_emergency_summary_has_its_sections_in_order() -> None:
    bundle = summary(emergency_sheet()[1], acp_record()[1])
    valid_fhir(bundle)
    head = composition(bundle)
    assert head["title"] == "救急時サマリー"
    assert [code for _, code in section_codes(bundle)] == [
        "identity", "team", "clinical", "devices", "baseline", "dnar", "acp", "review"]
    urls = {entry["fullUrl"] for entry in bundle["entry"]}
    assert {f"{BASE}/QuestionnaireResponse/em-1", f"{BASE}/QuestionnaireResponse/acp-1"} <= urls
    team = section(bundle, "team")["text"]["div"]
    assert "03-0000-0003" in team and "後方支援病院" in team
    assert section(bundle, "devices")["emptyReason"]["coding"][0]["code"] == "unavailable"
    assert "訪問看護師 青木" in section(bundle, "review")["text"]["div"]
    assert head["date"] == "2026-11-20T11:00:00+09:00"  # the newest sheet, not the time of the request


def test_the_dnar_order_and_the_acp_wishes_are_separate_sections() -> None:
    bundle = summary(emergency_sheet()[1], acp_record()[1])
    dnar, acp = section(bundle, "dnar"), section(bundle, "acp")
    assert "緑川 医師" in dnar["text"]["div"] and "2026-10-01" in dnar["text"]["div"]
    assert "人工呼吸器" not in dnar["text"]["div"] and "搬送先" not in dnar["text"]["div"]
    assert "<li>人工呼吸器: 希望しない</li>" in acp["text"]["div"]
    assert "山田 一郎" in acp["text"]["div"] and "2026-10-15" in acp["text"]["div"]
    assert "できるだけ家で" not in acp["text"]["div"]  # the discussion's own words are not part of the summary
    assert acp["entry"] == [{"reference": f"{BASE}/QuestionnaireResponse/acp-1"}]
    assert dnar["entry"] == [{"reference": f"{BASE}/QuestionnaireResponse/em-1"}]


def test_a_missing_acp_record_leaves_its_section_empty() -> None:
    bundle = summary(emergency_sheet()[1], None)
    valid_fhir(bundle)
    acp = section(bundle, "acp")
    assert acp["emptyReason"]["coding"][0]["code"] == "unavailable" and "entry" not in acp
    assert "dnar" in [code for _, code in section_codes(bundle)]
    assert all("acp-1" not in entry["fullUrl"] for entry in bundle["entry"])


def test_withheld_wishes_hide_the_dnar_order() -> None:
    _, sheet = emergency_sheet()
    sheet["item"][6] = orjson.loads(marker("acp", "emergency.wishes"))
    bundle = summary(sheet, acp_record()[1])
    valid_fhir(bundle)
    assert section(bundle, "dnar")["emptyReason"]["coding"][0]["code"] == "withheld"
    assert "緑川 医師" not in orjson.dumps(bundle).decode()


def test_the_emergency_summary_is_stable() -> None:
    emergency, acp = emergency_sheet()[1], acp_record()[1]
    first = summary(emergency, acp)
    assert orjson.dumps({**summary(emergency, acp, LATER), "timestamp": NOW}) == orjson.dumps(first)
    assert summary(emergency, None)["id"] != first["id"]


def test_the_emergency_summary_needs_ids_for_the_sheets_it_gets() -> None:
    with pytest.raises(ValueError, match="AcpRecord"):
        emergency_summary(None, acp_record()[1], templates={"AcpRecord": template("AcpRecord")}, patient=PATIENT,
                          ids={}, base=BASE, timestamp=NOW)


JP = "http://jpfhir.jp/fhir/clins/CodeSystem/document-section"


def jp_section(code: str, title: str, div: str | None = None, entries: tuple[str, ...] = ()) -> Json:
    found: Json = {"title": title, "code": {"coding": [{"system": JP, "code": code}]}}
    if div is not None:
        found["text"] = {"status": "additional", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{div}</div>'}
    if entries:
        found["entry"] = [{"reference": url} for url in entries]
    return found


def jp_clins_summary() -> Json:
    """A discharge summary shaped like JP-CLINS: structured sections under a 300 section, entries by urn:uuid."""
    def urn(n: int) -> str:
        return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"

    resources: list[tuple[str, Json]] = [
        (urn(2), {"resourceType": "Patient", "id": "x"}),
        (urn(3), {"resourceType": "Organization", "name": "あおば医療センター"}),
        (urn(4), {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
                  "period": {"start": "2026-09-01T10:00:00+09:00", "end": "2026-09-21T11:00:00+09:00"},
                  "serviceProvider": {"reference": urn(3)}}),
        (urn(5), {"resourceType": "Condition", "code": {"coding": [{"code": "J690", "display": "誤嚥性肺炎"}]},
                  "onsetDateTime": "2026-08-31", "subject": {"reference": urn(2)}}),
        (urn(6), {"resourceType": "Condition", "code": {"text": "慢性心不全"}, "subject": {"reference": urn(2)}}),
        (urn(7), {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                  "medicationCodeableConcept": {"text": "フロセミド錠20mg"},
                  "dosageInstruction": [{"text": "1回1錠 1日1回 朝食後"}], "subject": {"reference": urn(2)}}),
    ]
    head = {
        "resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "18842-5"}]},
        "subject": {"reference": urn(2)}, "encounter": {"reference": urn(4)}, "date": "2026-09-21",
        "author": [{"reference": urn(3)}], "title": "退院時サマリー",
        "event": [{"period": {"start": "2026-09-01", "end": "2026-09-21"}}],
        "section": [{
            "title": "構造情報", "code": {"coding": [{"system": JP, "code": "300"}]},
            "section": [
                jp_section("312", "入院理由", "<p>発熱と<b>呼吸困難</b>\nのため</p>"),
                jp_section("344", "退院時診断", "<ul><li>誤嚥性肺炎</li></ul>", (urn(5), urn(6))),
                jp_section("333", "入院中経過", "<p>抗菌薬で加療。</p><p>第10病日より食事再開 &amp; リハビリ。</p>"),
                jp_section("444", "退院時投薬指示", "<p>処方あり</p>", (urn(7),)),
                jp_section("424", "退院時方針指示", "<p>訪問診療へ</p>"),
            ],
        }],
    }
    return {"resourceType": "Bundle", "type": "document", "identifier": {"system": "urn:ietf:rfc:3986",
            "value": urn(9)}, "timestamp": "2026-09-21T12:00:00+09:00",
            "entry": [{"fullUrl": urn(1), "resource": head}, *({"fullUrl": u, "resource": r} for u, r in resources)]}


def test_a_jp_clins_discharge_summary_prefills_a_draft() -> None:
    document = jp_clins_summary()
    valid_fhir(document)
    draft = discharge_draft(document, patient_reference="Patient/p1")
    assert (draft["status"], draft["subject"]) == ("in-progress", {"reference": "Patient/p1"})
    issues = [issue for issue in validate_response(draft, template("DischargeSheet")) if issue.code != "required"]
    assert issues == []
    answers: dict[str, list[Any]] = {}
    for item in (item for group in draft["item"] for item in walk(group) if "answer" in item):
        answers.setdefault(item["linkId"], []).extend(next(iter(a.values())) for a in item["answer"])
    assert answers["discharge.basic.hospital"] == ["あおば医療センター"]
    assert answers["discharge.basic.admission-date"] == ["2026-09-01"]
    assert answers["discharge.basic.discharge-date"] == ["2026-09-21"]
    assert answers["discharge.medical.cause"] == ["発熱と呼吸困難 のため"]
    assert answers["discharge.medical.diagnosis.name"] == ["誤嚥性肺炎", "慢性心不全"]
    assert answers["discharge.medical.diagnosis.onset"] == ["2026-08-31"]
    assert answers["discharge.medical.course"] == ["抗菌薬で加療。\n第10病日より食事再開 & リハビリ。"]
    assert answers["discharge.medication.prescribed"] == ["フロセミド錠20mg 1回1錠 1日1回 朝食後"]
    QuestionnaireResponse.model_validate(draft)


def walk(item: Json) -> list[Json]:
    found = [item]
    for child in item.get("item", []):
        found += walk(child)
    return found


def test_a_draft_from_our_own_discharge_document_keeps_dates_and_prescriptions() -> None:
    draft = discharge_draft(discharge_document(), patient_reference="Patient/p1")
    assert [i for i in validate_response(draft, template("DischargeSheet")) if i.code != "required"] == []
    basic = {item["linkId"]: item["answer"][0] for item in draft["item"][0]["item"]}
    assert basic["discharge.basic.admission-date"] == {"valueDate": "2026-11-02"}
    assert basic["discharge.basic.hospital"] == {"valueString": "みどり総合病院"}
    prescribed = draft["item"][-1]["item"][0]["answer"]
    assert [a["valueString"] for a in prescribed] == PRESCRIPTIONS


def bad(change: Any) -> Json:
    document = jp_clins_summary()
    change(document)
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"resourceType": "Patient"}, "document Bundle"),
        (bad(lambda d: d.update(type="collection")), "document Bundle"),
        (bad(lambda d: d.update(entry=[])), "first entry"),
        (bad(lambda d: d["entry"].reverse()), "first entry"),
        (bad(lambda d: d["entry"][0]["resource"].update(type={"coding": [{"code": "57133-1"}]})), "discharge summary"),
    ],
)
def test_a_bundle_that_is_no_discharge_summary_is_refused(document: Json, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        discharge_draft(document, patient_reference="Patient/p1")


def example_files(*kinds: str) -> list[Any]:
    """The valid example sheets of ``kinds`` (all kinds when none is named); a visible skip when there are none."""
    files = sorted(EXAMPLES.glob("*/valid-*.json")) if EXAMPLES.is_dir() else []
    files = [path for path in files if not kinds or path.parent.name in kinds]
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no example sheets in {EXAMPLES} yet"))]
    return [pytest.param(path, id=f"{path.parent.name}/{path.name}") for path in files]


@pytest.mark.parametrize("path", example_files())
def test_every_example_sheet_makes_a_valid_document(path: Path) -> None:
    sheet: Json = orjson.loads(path.read_bytes())
    tpl = template(path.parent.name)
    bundle = sheet_document(copy.deepcopy(sheet), tpl, sheet_id=str(sheet.get("id") or path.stem), version=1,
                            patient=PATIENT, base=BASE, timestamp=NOW)
    valid_fhir(bundle)
    assert composition(bundle)["title"] == tpl["title"]
    assert len(composition(bundle)["section"]) == len(tpl["item"])


@pytest.mark.parametrize(("index", "change"), [(0, {"date": "yesterday"}), (3, {"period": {"start": "soon"}})])
def test_the_validity_check_looks_inside_entries(index: int, change: Json) -> None:
    bundle = discharge_document()
    bundle["entry"][index]["resource"].update(change)
    with pytest.raises(ValueError):
        valid_fhir(bundle)


@pytest.mark.parametrize("path", example_files("DischargeSheet", "EmergencySheet", "AcpRecord"))
def test_example_sheets_feed_the_summary_and_the_draft(path: Path) -> None:
    sheet: Json = orjson.loads(path.read_bytes())
    kind = path.parent.name
    if kind == "DischargeSheet":
        document = sheet_document(sheet, template(kind), sheet_id="x", version=1, patient=None, base=BASE,
                                  timestamp=NOW)
        draft = discharge_draft(document, patient_reference="Patient/p1")
        assert [i for i in validate_response(draft, template(kind)) if i.code != "required"] == []
    else:
        other = "AcpRecord" if kind == "EmergencySheet" else "EmergencySheet"
        given = {kind: sheet, other: None}
        bundle = emergency_summary(given["EmergencySheet"], given["AcpRecord"],
                                   templates={kind: template(kind)}, patient=PATIENT, ids={kind: ("x", 1)},
                                   base=BASE, timestamp=NOW)
        valid_fhir(bundle)
        assert len(composition(bundle)["section"]) == 8
