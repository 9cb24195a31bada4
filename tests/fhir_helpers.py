"""Small factories for FHIR tests: resources built as plain dicts, posted through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(family: str = "山田", given: str = "太郎", kana: tuple[str, str] = ("ヤマダ", "タロウ"),
            identifier: str | None = None, birth: str = "1940-05-12", gender: str = "male",
            **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": identifier or uuid.uuid4().hex[:10]}],
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
             note: str = "退院後の療養について") -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "urn:renkei:questionnaire:DischargeSheet|1.0.0",
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": authored,
        "item": [{"linkId": "note", "text": "メモ", "answer": [{"valueString": note}]}],
    }


def create(http: httpx.Client, headers: dict[str, str], body: dict[str, Any],
           **extra_headers: str) -> httpx.Response:
    answer = http.post(f"/fhir/{body['resourceType']}", json=body, headers={**headers, **FHIR_JSON, **extra_headers})
    return answer


def created_id(answer: httpx.Response) -> str:
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])
