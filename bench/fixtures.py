"""Benchmark data: valid sheets (QuestionnaireResponses) and patients, as plain dicts.

The sheets are built from the realistic examples in ``schemas/examples`` (valid against the exact template
version they name, as every write path now checks: services/share/sheets/validation.py), trimmed once to the
benchmarks' sizes — a discharge sheet of about 4.4 KB and a daily care note of 4.8–5.5 KB of JSON, the sizes the
store and access benchmarks measured before the sheets were checked, so their figures stay comparable — by taking
out optional answers, the largest section's last first, as long as the sheet stays valid. ``full_sheet`` is a
discharge sheet as the examples fill it (about 16 KB): what bench/sheets.py shares. Each section carries the
sensitivity label the template gives it, as the sheet rules stamp it on a write (so bulk-loaded sheets,
bench/seed.py, are redacted as shared ones are). ``day`` picks one of the examples and moves every date in the
sheet with ``authored``, so rows differ and the dates stay consistent (a discharge date after ``authored``).
"""

from __future__ import annotations

import functools
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

FAMILY = ["山田", "佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "中村", "小林", "加藤"]
KANA = ["ヤマダ", "サトウ", "スズキ", "タカハシ", "タナカ", "イトウ", "ワタナベ", "ナカムラ", "コバヤシ", "カトウ"]
GIVEN = ["太郎", "花子", "一郎", "幸子", "健", "美咲", "誠", "由美", "翔", "陽子"]

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
LABEL_SYSTEM = "urn:renkei:codesystem:sensitivity-label"
SECTION_LABEL = "urn:renkei:extension:sensitivity-label"

# Target sizes (orjson bytes of the sheet as returned, labels included): those of the fixtures the store and access
# benchmarks used before sheets had to be valid (4,451 and 5,506 bytes).
SHEET_BYTES = 4450
NOTE_BYTES = 5500
# The daily note's sections a care worker may not read (label "nursing", schemas/access/permissions.json; the
# care worker reads general, medication and care): kept filled, so that bench/access.py's reader has three of
# each note's seven sections withheld. The pain section (nursing too) is left out, so that it is three.
NOTE_WITHHELD = ("daily.vitals", "daily.skin", "daily.observation")
NOTE_LEFT_OUT = ("daily.pain",)
# The discharge sheet's medication section, which an emergency sheet summarises (services/share/sheets/scenes.py
# SUMMARISED): kept filled, so that sharing the sheet runs that scene rule's check as a real sheet does.
SHEET_KEPT = ("discharge.medication",)
BASE_DAY = date(2026, 1, 1)


def patient(index: int) -> dict[str, Any]:
    f, g = index % 10, (index // 10) % 10
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": f"B{index:08d}"}],
        "name": [{"family": FAMILY[f], "given": [GIVEN[g]]}, {"family": KANA[f], "given": ["タロウ"]}],
        "gender": "female" if index % 2 else "male",
        "birthDate": f"{1930 + index % 60}-{1 + index % 12:02d}-{1 + index % 28:02d}",
    }


def sheet(patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    """A completed discharge sheet of about 4.4 KB (one of two examples, by ``day``, trimmed)."""
    return _fill(_bases("DischargeSheet", SHEET_BYTES, SHEET_KEPT, ())[day % 2], patient_id, author_id, day)


def full_sheet(patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    """A completed discharge sheet as the examples fill it, every section answered (15.6 or 16.6 KB)."""
    return _fill(_bases("DischargeSheet", 1 << 30, (), ())[day % 2], patient_id, author_id, day)


def daily_note(patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    """A completed daily care note of 4.8–5.5 KB with seven sections, each with its sensitivity label; three of
    them ("nursing": vitals, skin, observation) a care worker may not see: bench/access.py's redaction."""
    return _fill(_bases("DailyCareNote", NOTE_BYTES, NOTE_WITHHELD, NOTE_LEFT_OUT)[day % 2], patient_id, author_id,
                 day)


def pick(rng: random.Random, items: list[str]) -> str:
    return items[rng.randrange(len(items))]


# Building ----------------------------------------------------------------------------------------------------


class _Base:
    """A trimmed example: its JSON, where its dates are, and the day its ``authored`` falls on."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.raw = orjson.dumps(body)
        self.authored = datetime.fromisoformat(body["authored"])
        self.dates: list[tuple[tuple[Any, ...], str]] = list(_dated(body, ()))


def _fill(base: _Base, patient_id: str, author_id: str, day: int) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(base.raw)  # a deep copy, several times faster than copy.deepcopy
    authored = datetime.combine(BASE_DAY + timedelta(days=day % 365), base.authored.timetz()) \
        + timedelta(minutes=day * 7 % 240)
    shift = authored.date() - base.authored.date()
    for path, key in base.dates:
        holder = body
        for step in path:
            holder = holder[step]
        value = holder[key]
        if key == "valueDate":
            holder[key] = (date.fromisoformat(value) + shift).isoformat()
        else:
            holder[key] = (datetime.fromisoformat(value) + shift).isoformat()
    body["subject"] = {"reference": f"Patient/{patient_id}"}
    body["author"] = {"reference": f"Practitioner/{author_id}"}
    body["authored"] = authored.isoformat()
    return body


def _dated(node: Any, path: tuple[Any, ...]) -> Any:
    """(path, key) of every valueDate and valueDateTime under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("valueDate", "valueDateTime") and isinstance(value, str):
                yield path, key
            else:
                yield from _dated(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _dated(value, (*path, index))


@functools.cache
def _bases(kind: str, size: int, keep: tuple[str, ...], leave_out: tuple[str, ...]) -> tuple[_Base, ...]:
    template = orjson.loads((SCHEMAS / "questionnaires" / f"{kind}.json").read_bytes())
    labels = {item["linkId"]: ext["valueCoding"]["code"] for item in template["item"]
              for ext in item.get("extension") or [] if ext.get("url") == SECTION_LABEL}
    found = []
    for path in sorted((SCHEMAS / "examples" / kind).glob("valid-*.json")):
        body = orjson.loads(path.read_bytes())
        body["item"] = [item for item in body["item"] if item["linkId"] not in leave_out]
        for item in body["item"]:
            if item["linkId"] in labels:
                item["extension"] = [{"url": SECTION_LABEL,
                                      "valueCoding": {"system": LABEL_SYSTEM, "code": labels[item["linkId"]]}}]
        _trim(body, template, size, keep)
        found.append(_Base(body))
    return tuple(found)


def _trim(body: dict[str, Any], template: dict[str, Any], size: int, keep: tuple[str, ...]) -> None:
    """Take optional answers out of ``body`` until it is ``size`` bytes or less: each time the last item of the
    largest section that can go without the sheet becoming invalid (a required item, or one another's
    enableWhen reads, stays). A section left empty goes too, unless it is one of ``keep``."""
    from services.share.sheets.validation import validate_response

    assert not validate_response(body, template), f"{body['questionnaire']}: the example is not valid"
    pinned: set[int] = set()
    while (excess := len(orjson.dumps(body)) - size) > 0:
        sections = sorted(body["item"], key=lambda s: len(orjson.dumps(s)), reverse=True)
        removed = False
        # First what does not take the sheet far below its size; then anything.
        for section, fitting in [(s, True) for s in sections] + [(s, False) for s in sections]:
            for holder, index in reversed(list(_removable(section))):
                item = holder[index]
                if id(item) in pinned or (fitting and len(orjson.dumps(item)) > excess + 120):
                    continue
                del holder[index]
                emptied = not section.get("item")
                if emptied:
                    if section["linkId"] in keep:
                        holder.insert(index, item)
                        pinned.add(id(item))
                        continue
                    body["item"].remove(section)
                if validate_response(body, template):
                    if emptied:
                        body["item"].insert(sections.index(section), section)  # order restored below
                    holder.insert(index, item)
                    pinned.add(id(item))
                    continue
                _drop_empty_groups(section)
                removed = True
                break
            if removed:
                break
        if not removed:
            break  # nothing more can go
    order = [item["linkId"] for item in template["item"]]
    body["item"].sort(key=lambda item: order.index(item["linkId"]))
    assert not validate_response(body, template), f"{body['questionnaire']}: trimmed into an invalid sheet"


def _removable(section: dict[str, Any]) -> Any:
    """(list, index) of every item below a section, in document order: children before their parents' next
    sibling, so that the reversed order takes leaves first."""
    for index, item in enumerate(section.get("item") or []):
        yield from _removable(item)
        for answer in item.get("answer") or []:
            yield from _removable(answer)
        yield section["item"], index


def _drop_empty_groups(node: dict[str, Any]) -> None:
    """Groups (and answers' item lists) left without items: FHIR JSON has no empty arrays."""
    for answer in node.get("answer") or []:
        _drop_empty_groups(answer)
        if "item" in answer and not answer["item"]:
            del answer["item"]
    if "item" in node:
        kept = []
        for child in node["item"]:
            _drop_empty_groups(child)
            if child.get("item") or child.get("answer"):
                kept.append(child)
        if kept:
            node["item"] = kept
        else:
            del node["item"]
