"""A daily care note's vital signs as LOINC-coded Observations, and the readings that need someone to act today.

A note keeps its vitals inside a QuestionnaireResponse, where nobody can search them, graph them or hand them to a
hospital. Each answered vital becomes one FHIR R4B Observation that points back at the note (``derivedFrom``) and
carries an identifier stable per (note, linkId), so a re-posted or amended note updates the same Observations
instead of adding more. Codes and units come from the template's ``code`` and questionnaire-unit extension; only
what the template lacks is filled in here (see ``_UNCODED``). Normal and urgent bounds are data
(``schemas/sheets/vital-ranges.json``), so a network with its own protocol changes a file, not this module.

Pure: dicts in, dicts out — no database, no HTTP. The note is taken as already parsed (``parse_resource``) and
checked against its template (``validation.validate_response``): its subject and visit time are copied as they are.
A reading that is no finite number still counts as unanswered rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.kit.codes import SENSITIVITY_LABEL
from services.share.access.layout import section_label
from services.share.sheets.answers import dicts, walk
from services.share.sheets.vital_ranges import VitalRanges, beyond, default_ranges, fill, is_number

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UNIT_EXTENSION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
IDENTIFIER_SYSTEM = "urn:renkei:identifier:sheet-observation"

VISIT_TIME = "daily.visit.time"
VISIT_URGENT = "daily.visit.urgent"
ON_OXYGEN = "daily.vitals.on-oxygen"
OXYGEN_FLOW = "daily.vitals.oxygen-flow"

# Items the template leaves uncoded: (coding, UCUM unit, category). Pain is an assessment score, not one of the
# FHIR vital signs, so it goes under "survey": a client asking for category=vital-signs expects the profile's codes.
_UNCODED: dict[str, tuple[dict[str, str], str, str]] = {
    "daily.pain.nrs": (
        {
            "system": LOINC,
            "code": "72514-3",
            "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
        },
        "{score}",
        "survey",
    ),
}
# The FHIR vital-signs profile asks for 2708-6 beside the pulse-oximetry code (R4B oxygensat profile).
_PROFILE_CODINGS = {"59408-5": {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"}}
# Oxygen given changes what an SpO2 means, so its flow travels with the reading (the pulse-oximetry component).
_FLOW_CODING = {"system": LOINC, "code": "3151-8", "display": "Inhaled oxygen flow rate"}

_DISPLAYS = {"N": "Normal", "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high"}
_SEVERITY = {"N": 0, "L": 1, "H": 1, "LL": 2, "HH": 2}
_STATUSES = {"amended": "amended", "entered-in-error": "entered-in-error", "in-progress": "preliminary"}


@dataclass(frozen=True)
class Finding:
    link_id: str
    value: float
    bound: float
    message_ja: str
    message_en: str


# --- reading the note -----------------------------------------------------------------------------------------


def _answers(note: dict[str, Any]) -> dict[str, Any]:
    """The first answer value of each linkId; a malformed note yields fewer answers, never an exception."""
    found: dict[str, Any] = {}
    for item in walk(note.get("item")):
        link_id = item.get("linkId")
        for answer in dicts(item.get("answer"))[:1]:
            value = next((v for k, v in answer.items() if k.startswith("value")), None)
            if isinstance(link_id, str) and value is not None:
                found.setdefault(link_id, value)
    return found


def _reading(answers: dict[str, Any], link_id: str) -> float | None:
    value = answers.get(link_id)
    return value if isinstance(value, int | float) and is_number(value) else None


# --- what the template says about each vital -------------------------------------------------------------------


@dataclass(frozen=True)
class _Vital:
    link_id: str
    codings: tuple[dict[str, str], ...]
    text: str
    unit: str | None
    category: str
    label: str | None  # the sensitivity label of its section, so the Observation is no more visible than the note
    parts: tuple[_Vital, ...] = ()  # a panel's components (blood pressure)


def _vitals(template: dict[str, Any]) -> list[_Vital]:
    found: list[_Vital] = []
    for section in dicts(template.get("item")):
        label = section_label(section)
        for node in dicts(section.get("item")):
            vital = _vital(node, label)
            if vital is not None:
                found.append(vital)
    return found


def _vital(node: dict[str, Any], label: str | None) -> _Vital | None:
    """A numeric item, or a group of them (a panel), with a LOINC code from the template or ``_UNCODED``."""
    if node.get("type") not in ("decimal", "integer", "group"):
        return None
    link_id = str(node.get("linkId"))
    codings = [c for c in dicts(node.get("code")) if c.get("system") == LOINC and c.get("code")]
    unit = next((e["valueCoding"].get("code") for e in dicts(node.get("extension"))
                 if e.get("url") == UNIT_EXTENSION and isinstance(e.get("valueCoding"), dict)), None)
    category = "vital-signs"
    if not codings and link_id in _UNCODED:
        coding, fallback_unit, category = _UNCODED[link_id]
        codings, unit = [coding], unit or fallback_unit
    if not codings:
        return None
    codings += [_PROFILE_CODINGS[c["code"]] for c in codings if c["code"] in _PROFILE_CODINGS]
    if node.get("type") != "group":
        return _Vital(link_id, tuple(codings), str(node.get("text") or link_id), unit, category, label)
    parts = tuple(part for child in dicts(node.get("item")) if (part := _vital(child, label)) is not None)
    if not parts:
        return None
    return _Vital(link_id, tuple(codings), str(node.get("text") or link_id), unit, category, label, parts)


# --- building Observations --------------------------------------------------------------------------------------


def observations_from_note(
    note: dict[str, Any], template: dict[str, Any], *, note_reference: str, ranges: VitalRanges | None = None
) -> list[dict[str, Any]]:
    """One Observation per vital answered in ``note`` (a DailyCareNote QuestionnaireResponse), in template order.

    ``note_reference`` is the note's reference ("QuestionnaireResponse/123", a version may follow); ``ranges``
    defaults to the shipped ``schemas/sheets/vital-ranges.json``.
    """
    ranges = ranges or default_ranges()
    answers = _answers(note)
    status = _STATUSES.get(str(note.get("status")), "final")
    context = _context(note, answers)
    observations = []
    for vital in _vitals(template):
        measured = _measurement(vital, answers, ranges)
        if measured is None:
            continue
        identifier = {"system": IDENTIFIER_SYSTEM, "value": f"{_unversioned(note_reference)}#{vital.link_id}"}
        observations.append({
            "resourceType": "Observation",
            **_meta(vital),
            "identifier": [identifier],
            "status": status,
            **_header(vital),
            **context,
            **measured,
            "derivedFrom": [{"reference": note_reference}],
        })
    return observations


def _context(note: dict[str, Any], answers: dict[str, Any]) -> dict[str, Any]:
    """subject and effectiveDateTime, each when the note has it."""
    context: dict[str, Any] = {}
    if isinstance(note.get("subject"), dict):
        context["subject"] = note["subject"]
    # When the vitals were taken is the visit's time; the note may have been written up later.
    effective = answers.get(VISIT_TIME) if isinstance(answers.get(VISIT_TIME), str) else note.get("authored")
    if isinstance(effective, str):
        context["effectiveDateTime"] = effective
    return context


def _unversioned(reference: str) -> str:
    return reference.split("/_history/")[0]


def _meta(vital: _Vital) -> dict[str, Any]:
    # The section's label, so that a reader the note's vitals section is withheld from cannot read them here.
    if vital.label is None:
        return {}
    return {"meta": {"security": [{"system": SENSITIVITY_LABEL, "code": vital.label}]}}


def _header(vital: _Vital) -> dict[str, Any]:
    return {
        "category": [{"coding": [{"system": CATEGORY, "code": vital.category}]}],
        "code": {"coding": [dict(c) for c in vital.codings], "text": vital.text},
    }


def _measurement(vital: _Vital, answers: dict[str, Any], ranges: VitalRanges) -> dict[str, Any] | None:
    """valueQuantity (or components), interpretation and referenceRange; None when nothing was measured."""
    if vital.parts:
        # A blood pressure with only the systolic written down still is a reading: the missing part is left out.
        components = [c for part in vital.parts if (c := _result(part, answers, ranges, component=True))]
        if not components:
            return None
        worst = max((c["interpretation"][0]["coding"][0]["code"] for c in components if "interpretation" in c),
                    key=_SEVERITY.__getitem__, default=None)
        return {"component": components, **({"interpretation": _interpretation(worst)} if worst else {})}
    result = _result(vital, answers, ranges, component=False)
    if result is not None and vital.codings[0]["code"] == "59408-5":
        result = _with_oxygen(result, answers)
    return result


def _result(vital: _Vital, answers: dict[str, Any], ranges: VitalRanges, *, component: bool) -> dict[str, Any] | None:
    value = _reading(answers, vital.link_id)
    if value is None:
        return None
    result: dict[str, Any] = {"valueQuantity": _quantity(value, vital.unit)}
    if component:
        result = {"code": {"coding": [dict(c) for c in vital.codings], "text": vital.text}, **result}
    bounds = ranges.by_link_id.get(vital.link_id)
    # Bounds in another unit than the template's would misjudge every reading: then no interpretation at all.
    if bounds is not None and bounds.unit == (vital.unit or bounds.unit):
        result["interpretation"] = _interpretation(bounds.interpretation(value))
        result["referenceRange"] = [
            {"low": _quantity(bounds.normal_low, bounds.unit), "high": _quantity(bounds.normal_high, bounds.unit)}
        ]
    return result


def _with_oxygen(result: dict[str, Any], answers: dict[str, Any]) -> dict[str, Any]:
    flow = _reading(answers, OXYGEN_FLOW)
    if answers.get(ON_OXYGEN) is not True or flow is None:
        return result
    component = {"code": {"coding": [_FLOW_CODING], "text": "酸素流量"}, "valueQuantity": _quantity(flow, "L/min")}
    return {**result, "component": [component]}


def _quantity(value: float, unit: str | None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity.update(unit=unit, system=UCUM, code=unit)
    return quantity


def _interpretation(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": INTERPRETATION, "code": code, "display": _DISPLAYS[code]}]}]


# --- urgency ----------------------------------------------------------------------------------------------------


def urgent_findings(note: dict[str, Any], ranges: VitalRanges) -> list[Finding]:
    """The readings beyond an urgent bound, in the order of the ranges file."""
    answers = _answers(note)
    findings = []
    for link_id, bounds in ranges.by_link_id.items():
        value = _reading(answers, link_id)
        if value is None:
            continue
        for key, bound in bounds.urgent.items():
            if beyond(key, value, bound):
                ja, en = bounds.messages[key]
                findings.append(Finding(link_id, value, bound, fill(ja, value, bound), fill(en, value, bound)))
    return findings


def is_urgent(note: dict[str, Any], ranges: VitalRanges) -> bool:
    """Whether the note needs someone today: a reading beyond an urgent bound, or the recorder said so."""
    return _answers(note).get(VISIT_URGENT) is True or bool(urgent_findings(note, ranges))


