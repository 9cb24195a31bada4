"""Benchmark data: a 3.7 KB discharge-sheet QuestionnaireResponse and patients, as plain dicts."""

from __future__ import annotations

import random
from typing import Any

FAMILY = ["山田", "佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "中村", "小林", "加藤"]
KANA = ["ヤマダ", "サトウ", "スズキ", "タカハシ", "タナカ", "イトウ", "ワタナベ", "ナカムラ", "コバヤシ", "カトウ"]
GIVEN = ["太郎", "花子", "一郎", "幸子", "健", "美咲", "誠", "由美", "翔", "陽子"]


def patient(index: int) -> dict[str, Any]:
    f, g = index % 10, (index // 10) % 10
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": f"B{index:08d}"}],
        "name": [{"family": FAMILY[f], "given": [GIVEN[g]]}, {"family": KANA[f], "given": ["タロウ"]}],
        "gender": "female" if index % 2 else "male",
        "birthDate": f"{1930 + index % 60}-{1 + index % 12:02d}-{1 + index % 28:02d}",
    }


def _item(link: str, text: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link, "text": text, "answer": [value]}


def sheet(patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    """About 3.7 KB of JSON, shaped like a discharge sheet."""
    sections = []
    for section in range(6):
        items = [_item(f"s{section}.q{q}", f"項目{section}-{q} 日常生活動作・服薬・医療処置",
                       {"valueString": "退院後は訪問看護で褥瘡処置を継続。服薬は一包化、朝夕の血圧測定を依頼。"})
                 for q in range(3)]
        sections.append({"linkId": f"s{section}", "text": f"第{section}章", "item": items})
    return _response("DischargeSheet", patient_id, author_id, day, sections)


def _response(kind: str, patient_id: str, author_id: str, day: int, sections: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"urn:renkei:questionnaire:{kind}|1.0.0",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "author": {"reference": f"Practitioner/{author_id}"},
        "authored": f"2026-{1 + day % 12:02d}-{1 + day % 28:02d}T{day % 24:02d}:00:00+09:00",
        "item": sections,
    }


LABEL_SYSTEM = "urn:renkei:codesystem:sensitivity-label"
SECTION_LABEL = "urn:renkei:extension:sensitivity-label"
DAILY_SECTIONS = ["general", "care", "medication", "medical", "nursing", "mental-health"]


def daily_note(patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    """A daily care note of about 3 KB whose sections carry sensitivity labels (some of which a care worker may
    not see: bench/access.py's redaction)."""
    sections = []
    for label in DAILY_SECTIONS:
        items = [_item(f"{label}.q{q}", f"{label} 項目{q} 本日の様子・服薬・処置",
                       {"valueString": "午前中は穏やかに過ごす。昼食は全量摂取、服薬確認済み。夕方に軽い咳あり。"})
                 for q in range(3)]
        sections.append({"linkId": label, "text": label, "item": items,
                         "extension": [{"url": SECTION_LABEL, "valueCoding": {"system": LABEL_SYSTEM, "code": label}}]})
    return _response("DailyCareNote", patient_id, author_id, day, sections)


def pick(rng: random.Random, items: list[str]) -> str:
    return items[rng.randrange(len(items))]
