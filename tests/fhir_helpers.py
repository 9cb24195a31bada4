"""Small factories for FHIR tests: resources built as plain dicts, posted through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.planted import FAMILY, NOTE
from tests.planted import identifier as planted_identifier

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(family: str = FAMILY, given: str = "太郎", kana: tuple[str, str] = ("ヤマダ", "タロウ"),
            identifier: str | None = None, birth: str = "1940-05-12", gender: str = "male",
            **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": identifier or planted_identifier()}],
        "name": [
            {"use": "official", "family": family, "given": [given], "text": f"{family} {given}"},
            {"use": "official", "family": kana[0], "given": [kana[1]],
             "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                            "valueCode": "SYL"}]},
        ],
        "gender": gender,
        "birthDate": birth,
        **extra,
    }


def response(patient_id: str, status: str = "completed", authored: str = "2026-11-01T09:00:00+09:00",
             note: str = NOTE) -> dict[str, Any]:
    """The smallest complete discharge sheet its template accepts, with ``note`` as the hospital course."""
    def answered(link: str, text: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"linkId": link, "text": text, "answer": [value]}

    handover = [answered("discharge.handovers.entry.number", "回数", {"valueInteger": 1}),
                answered("discharge.handovers.entry.date", "日付", {"valueDate": "2026-10-30"}),
                answered("discharge.handovers.entry.method", "方法", {"valueCoding": {
                    "system": "urn:renkei:codesystem:handover-method", "code": "conference",
                    "display": "カンファレンス"}}),
                answered("discharge.handovers.entry.profession", "職種", {"valueCoding": {
                    "system": "urn:renkei:codesystem:profession", "code": "nurse", "display": "看護師"}}),
                answered("discharge.handovers.entry.informant", "情報提供者", {"valueString": "退院支援看護師 佐藤"})]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "urn:renkei:questionnaire:DischargeSheet|1.0.0",
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": authored,
        "item": [
            {"linkId": "discharge.basic", "text": "基本情報", "item": [
                answered("discharge.basic.hospital", "医療機関名", {"valueString": "市立中央病院"}),
                answered("discharge.basic.admission-date", "入院日", {"valueDate": "2026-10-01"}),
                answered("discharge.basic.discharge-date", "退院日", {"valueDate": "2026-11-05"})]},
            {"linkId": "discharge.medical", "text": "医学的管理", "item": [
                answered("discharge.medical.cause", "入院の原因となった疾患", {"valueString": "誤嚥性肺炎"}),
                answered("discharge.medical.course", "経過", {"valueString": note})]},
            {"linkId": "discharge.handovers", "text": "聞き取り記録", "item": [
                {"linkId": "discharge.handovers.entry", "text": "聞き取り", "item": handover}]},
        ],
    }


EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"


def example(kind: str, patient_id: str, name: str | None = None, status: str | None = None) -> dict[str, Any]:
    """A realistic sheet from ``schemas/examples/<kind>/`` (the first valid one, or ``valid-<name>``), about
    ``patient_id``."""
    path = EXAMPLES / kind / f"valid-{name}.json" if name else sorted((EXAMPLES / kind).glob("valid-*.json"))[0]
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    body["subject"] = {"reference": f"Patient/{patient_id}"}
    body.pop("author", None)  # the server records who wrote it
    if status is not None:
        body["status"] = status
    return body


def observation(patient_id: str, celsius: float = 36.8) -> dict[str, Any]:
    """A body temperature: what a create in one statement is measured with (a sheet's rules write more)."""
    return {"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
            "subject": {"reference": f"Patient/{patient_id}"}, "valueQuantity": {"value": celsius, "unit": "Cel"}}


def create(http: httpx.Client, headers: dict[str, str], body: dict[str, Any],
           **extra_headers: str) -> httpx.Response:
    answer = http.post(f"/fhir/{body['resourceType']}", json=body, headers={**headers, **FHIR_JSON, **extra_headers})
    return answer


def created_id(answer: httpx.Response) -> str:
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])
