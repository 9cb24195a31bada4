"""A discharge-sheet draft made from a hospital's discharge summary (a JP-CLINS document Bundle).

A hospital that sends a discharge summary should not make a care manager retype dates, diagnoses and
prescriptions into the discharge sheet: what maps cleanly onto the DischargeSheet template (admission and
discharge dates, the hospital, the cause and diagnoses, the course, the discharge prescriptions) becomes an
``in-progress`` sheet, valid against its template apart from what only a person can fill in. Pure: dicts in,
dicts out (``POST /fhir/Bundle/{id}/$discharge-draft`` calls it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from typing import Any

from services.share.sheets.answers import dicts
from services.share.sheets.documents import (
    DISCHARGE_SHEET,
    DISCHARGE_SUMMARY,
    JP_CLINS_SECTION,
    JP_DISCHARGE_SUMMARY_SECTION,
    Json,
    Resolve,
)


def discharge_draft(document: Json, *, patient_reference: str, questionnaire: str = DISCHARGE_SHEET) -> Json:
    """An ``in-progress`` discharge sheet prefilled from an inbound JP-CLINS discharge summary document.

    Only what maps cleanly is taken — dates, hospital, cause and diagnoses, the course as plain text, discharge
    prescriptions as lines — so a professional completes the rest instead of correcting guesses.
    """
    composition = _discharge_composition(document)
    resources = _resolver(document)
    sections = list(_all_sections(composition.get("section")))
    encounter = resources(composition.get("encounter"))
    period = next((e["period"] for e in dicts(composition.get("event")) if isinstance(e.get("period"), dict)),
                  (encounter or {}).get("period") or {})
    basic = [
        _question("discharge.basic.hospital", "valueString", _hospital(composition, encounter, resources)),
        _question("discharge.basic.admission-date", "valueDate", _date(period.get("start"))),
        _question("discharge.basic.discharge-date", "valueDate", _date(period.get("end"))),
    ]
    diagnoses = _section_conditions(sections, resources, ("344", "342"))
    cause = _section_text(sections, "312") or (diagnoses[0][0] if diagnoses else None)
    medical = [
        _question("discharge.medical.cause", "valueString", _one_line(cause)),
        *(_diagnosis_group(name, onset) for name, onset in diagnoses),
        _question("discharge.medical.course", "valueString", _section_text(sections, "333")),
    ]
    prescriptions = [_prescription_line(r) for r in _section_resources(sections, resources, ("444",))]
    medication = [_question("discharge.medication.prescribed", "valueString", *filter(None, prescriptions))]
    groups = [("discharge.basic", basic), ("discharge.medical", medical), ("discharge.medication", medication)]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire,
        "status": "in-progress",
        "subject": {"reference": patient_reference},
        "item": [{"linkId": link_id, "item": kept} for link_id, items in groups if (kept := _present(items))],
    }


def _discharge_composition(document: Json) -> Json:
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle" or document.get("type") != "document":
        raise ValueError("a discharge draft needs a FHIR document Bundle (resourceType Bundle, type document)")
    entries = dicts(document.get("entry"))
    first = entries[0].get("resource") if entries else None
    if not isinstance(first, dict) or first.get("resourceType") != "Composition":
        raise ValueError("the document's first entry must be its Composition")
    codes = {coding.get("code") for coding in dicts((first.get("type") or {}).get("coding"))}
    if DISCHARGE_SUMMARY not in codes:
        raise ValueError(f"the Composition is not a discharge summary (type {sorted(map(str, codes))}, "
                         f"expected LOINC {DISCHARGE_SUMMARY})")
    return first


def _resolver(document: Json) -> Resolve:
    """Looks up a Reference among the Bundle's entries, by fullUrl or by ``Type/id``."""
    index: dict[str, Json] = {}
    for entry in dicts(document.get("entry")):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if isinstance(entry.get("fullUrl"), str):
            index[entry["fullUrl"]] = resource
        if resource.get("id"):
            index[f"{resource.get('resourceType')}/{resource['id']}"] = resource

    def resolve(reference: Any) -> Json | None:
        target = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(target, str):
            return None
        return index.get(target) or index.get("/".join(target.split("/")[-2:]))

    return resolve


def _all_sections(sections: Any) -> Iterator[Json]:
    """Every section, nested ones too: JP-CLINS puts the structured sections under a 300 section."""
    for section in dicts(sections):
        yield section
        yield from _all_sections(section.get("section"))


def _section_codes(section: Json) -> set[str]:
    codings = dicts((section.get("code") or {}).get("coding"))
    systems = (JP_CLINS_SECTION, JP_DISCHARGE_SUMMARY_SECTION)
    return {str(coding.get("code")) for coding in codings if coding.get("system") in systems}


def _sections_with(sections: list[Json], codes: Iterable[str]) -> list[Json]:
    wanted = set(codes)
    return [section for section in sections if _section_codes(section) & wanted]


def _section_text(sections: list[Json], code: str) -> str | None:
    texts = [_plain_text(str((s.get("text") or {}).get("div") or "")) for s in _sections_with(sections, (code,))]
    joined = "\n".join(text for text in texts if text)
    return joined or None


def _section_resources(sections: list[Json], resolve: Resolve, codes: tuple[str, ...]) -> list[Json]:
    """The resources the first section (in ``codes`` order of preference) with entries refers to."""
    for code in codes:
        found = [r for s in _sections_with(sections, (code,)) for e in dicts(s.get("entry")) if (r := resolve(e))]
        if found:
            return found
    return []


def _section_conditions(sections: list[Json], resolve: Resolve, codes: tuple[str, ...]) -> list[tuple[str, str | None]]:
    conditions = [r for r in _section_resources(sections, resolve, codes) if r.get("resourceType") == "Condition"]
    found = []
    for condition in conditions:
        name = _concept_text(condition.get("code"))
        if name:
            found.append((name, _date(condition.get("onsetDateTime"))))
    return found


def _hospital(composition: Json, encounter: Json | None, resolve: Resolve) -> str | None:
    """The discharging hospital: the stay's service provider, else the document's custodian or author Organization."""
    provider = (encounter or {}).get("serviceProvider")
    for reference in (provider, composition.get("custodian"), *dicts(composition.get("author"))):
        organization = resolve(reference)
        if organization is not None and organization.get("resourceType") == "Organization" and organization.get("name"):
            return str(organization["name"])
    if isinstance(provider, dict) and provider.get("display"):
        return str(provider["display"])
    return None


def _prescription_line(resource: Json) -> str | None:
    if resource.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
        return None
    name = _concept_text(resource.get("medicationCodeableConcept"))
    if not name:
        return None
    dosages = dicts(resource.get("dosageInstruction") or resource.get("dosage"))
    instructions = [str(d["text"]).strip() for d in dosages if isinstance(d.get("text"), str) and d["text"].strip()]
    return " ".join([name, *instructions])


def _diagnosis_group(name: str, onset: str | None) -> Json:
    items = [_question("discharge.medical.diagnosis.name", "valueString", name),
             _question("discharge.medical.diagnosis.onset", "valueDate", onset)]
    return {"linkId": "discharge.medical.diagnosis", "item": _present(items)}


def _question(link_id: str, value_type: str, *values: Any) -> Json | None:
    answers = [{value_type: value} for value in values if value]
    return {"linkId": link_id, "answer": answers} if answers else None


def _present(items: list[Json | None]) -> list[Json]:
    return [item for item in items if item is not None]


def _date(value: Any) -> str | None:
    """The date part of a date or dateTime (a discharge sheet asks for dates)."""
    if not isinstance(value, str):
        return None
    return value[:10] if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", value[:10]) else None


def _one_line(text: str | None) -> str | None:
    return " ".join(text.split()) if text else None


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return str(concept["text"]).strip()
    return next((str(c["display"]) for c in dicts(concept.get("coding")) if c.get("display")), None)


class _TextOnly(HTMLParser):
    """The text of an XHTML narrative, a line per block element."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        self.pieces.append(data)


def _plain_text(div: str) -> str:
    parser = _TextOnly()
    parser.feed(div)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.pieces).splitlines())
    return "\n".join(line for line in lines if line)
