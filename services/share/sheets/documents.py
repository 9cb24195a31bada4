"""FHIR documents made from sheets (a discharge-sheet draft made from a hospital's document: inbound.py).

A sheet (a QuestionnaireResponse) is the record professionals fill in; a hospital, an ambulance crew or a
break-the-glass reader needs something they can read and file without knowing our templates: a FHIR document
Bundle whose Composition carries a Japanese narrative per section. The reverse direction matters as much: a
hospital that sends a JP-CLINS discharge summary should not make a care manager retype dates, diagnoses and
prescriptions into the discharge sheet.

Pure: dicts in, dicts out — no database, no HTTP — so the ``$document`` operation, a bulk export and the tests all
call the same code. Output is byte-identical for the same sheet version apart from ``Bundle.timestamp``: every
generated id is a uuid5 of (sheet id, version, part), so a receiver that files the same document twice can tell.

Sections withheld from the reader (the ``urn:renkei:extension:withheld`` marker the access layer puts in place of a
section) are rendered as a short note, never their content, and nothing is extracted from them.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from services.kit.codes import SHEET_KIND, WITHHELD_EXTENSION
from services.share.access.layout import sheet_kind
from services.share.sheets import answers
from services.share.sheets.answers import dicts

Json = dict[str, Any]
Resolve = Callable[[Any], "Json | None"]  # a Reference → the Bundle entry's resource it points at

XHTML = "http://www.w3.org/1999/xhtml"
LOINC = "http://loinc.org"
URI = "urn:ietf:rfc:3986"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
VERSION_NUMBER = "http://hl7.org/fhir/StructureDefinition/composition-clinicaldocument-versionNumber"
# JP-CLINS section codes. The URL is the one the JP-CLINS IG (電子カルテ情報共有サービス 2文書5情報, v1.3.0+)
# gives its CodeSystem jp-codeSystem-clins-document-section (``^url`` in the IG's FSH source, jami-fhir-jp-wg);
# the earlier stand-alone eDischargeSummary IG used the second URL with the same codes, so inbound documents may
# carry either.
JP_CLINS_SECTION = "http://jpfhir.jp/fhir/clins/CodeSystem/document-section"
JP_DISCHARGE_SUMMARY_SECTION = "http://jpfhir.jp/fhir/eDischargeSummary/CodeSystem/document-section"
SHEET_SECTION = "urn:renkei:codesystem:sheet-section"
EMERGENCY_SECTION = "urn:renkei:codesystem:emergency-summary-section"
DISCHARGE_SUMMARY = "18842-5"
DISCHARGE_SHEET = "urn:renkei:questionnaire:DischargeSheet|1.0.0"

# A LOINC document type per sheet kind where one fits; the sheet kind coding always comes too.
_LOINC_TYPES: dict[str, tuple[str, str]] = {
    "DischargeSheet": (DISCHARGE_SUMMARY, "Discharge summary"),
    "EmergencySheet": ("60591-5", "Patient summary Document"),
    "AcpRecord": ("81334-5", "Patient Personal advance care plan"),
    "DailyCareNote": ("11506-3", "Progress note"),
}

# The JP-CLINS discharge-summary section closest to each discharge-sheet group. Groups without a counterpart
# (mental state, understanding, rehabilitation, precautions, prognosis, requirements, hand-overs) keep a
# sheet-section code of their linkId rather than be forced into a section that means something else.
DISCHARGE_SECTIONS: dict[str, tuple[str, str]] = {
    "discharge.basic": ("324", "退院時詳細セクション"),
    "discharge.medical": ("333", "入院中経過セクション"),
    "discharge.state": ("614", "退院時身体所見セクション"),
    "discharge.procedures": ("424", "退院時方針指示セクション"),
    "discharge.medication": ("444", "退院時投薬指示セクション"),
}

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:renkei:document")
_WITHHELD_NOTE = "閲覧権限のない項目のため表示しません"
_UNAVAILABLE_NOTE = "記載なし"


def stable_uuid(*seed: Any) -> str:
    """A uuid5 of the seed's JSON, so that ("a|1", 2) and ("a", "1|2") never meet."""
    return str(uuid.uuid5(_NAMESPACE, orjson.dumps(list(seed)).decode()))


# --- sheet_document -------------------------------------------------------------------------------------------


def sheet_document(
    sheet: Json, template: Json, *, sheet_id: str, version: int, patient: Json | None, base: str, timestamp: str
) -> Json:
    """One sheet version as a FHIR R4B document Bundle: Composition, Patient, the sheet, extracted resources.

    ``sheet`` is the sheet as the reader may see it (sections already withheld by the access layer). The Bundle id,
    its identifier and every generated fullUrl are uuid5 of (sheet_id, version, part); stored resources (the
    Patient, the sheet itself) keep their RESTful URL under ``base`` so a reader can fetch them. ``timestamp``
    appears only as Bundle.timestamp (and as Composition.date for a sheet without ``authored``).
    """
    base = base.rstrip("/")
    kind = sheet_kind(sheet) or str(template.get("name"))
    seed = (sheet_id, version)
    subject, patient_entries = _patient_part(patient, [sheet], base, seed)
    sheet_url = f"{base}/QuestionnaireResponse/{sheet_id}"
    extracted = _discharge_resources(sheet, seed, subject) if kind == "DischargeSheet" else {}
    sections = [
        _sheet_section(group, sheet, kind, [sheet_url, *extracted.get(str(group.get("linkId")), {})])
        for group in dicts(template.get("item"))
    ]
    composition = {
        **_composition_head(seed, version, _status(sheet), _document_type(kind, template), subject),
        "date": sheet.get("authored") or timestamp,
        "author": [_absolute(sheet["author"], base)] if isinstance(sheet.get("author"), dict) else _no_author(),
        "title": str(template.get("title") or kind),
        "section": sections,
    }
    if (stay := _stay(extracted)) is not None:
        composition["encounter"] = {"reference": stay[0]}
        composition["event"] = [{"period": stay[1]}]
    if version > 1:
        # The previous version's document is superseded by this one; readers filing both can tell which is current.
        previous = stable_uuid(sheet_id, version - 1, "composition")
        replaced = {"system": URI, "value": f"urn:uuid:{previous}"}
        composition["relatesTo"] = [{"code": "replaces", "targetIdentifier": replaced}]
    entries = [
        _entry(f"urn:uuid:{composition['id']}", composition),
        *patient_entries,
        _entry(sheet_url, {**sheet, "id": sheet_id}),
        *(_entry(url, resource) for url, resource in _extracted(extracted)),
    ]
    return _bundle(seed, timestamp, entries)


def _sheet_section(group: Json, sheet: Json, kind: str, sources: list[str]) -> Json:
    link_id = str(group.get("linkId"))
    title = str(group.get("text") or link_id)
    code = _discharge_code(link_id, title) if kind == "DischargeSheet" else _sheet_section_code(link_id, title)
    found = [item for item in dicts(sheet.get("item")) if item.get("linkId") == link_id]
    if any(_is_withheld(item) for item in found):
        return _empty_section(title, code, "withheld")
    body = "".join(_render_items(item.get("item"), group.get("item")) for item in found)
    if not body:
        return _empty_section(title, code, "unavailable")
    return {"title": title, "code": code, "text": _narrative(body), "entry": [{"reference": url} for url in sources]}


def _discharge_code(link_id: str, title: str) -> Json:
    if link_id not in DISCHARGE_SECTIONS:
        return _sheet_section_code(link_id, title)
    code, display = DISCHARGE_SECTIONS[link_id]
    return {"coding": [{"system": JP_CLINS_SECTION, "code": code, "display": display}], "text": title}


def _sheet_section_code(link_id: str, title: str) -> Json:
    return {"coding": [{"system": SHEET_SECTION, "code": link_id, "display": title}], "text": title}


def _document_type(kind: str, template: Json) -> Json:
    title = str(template.get("title") or kind)
    codings = [{"system": SHEET_KIND, "code": kind, "display": title}]
    if kind in _LOINC_TYPES:
        code, display = _LOINC_TYPES[kind]
        # LOINC first for the discharge summary: JP-CLINS receivers sort documents by it.
        loinc = {"system": LOINC, "code": code, "display": display}
        codings = [loinc, *codings] if kind == "DischargeSheet" else [*codings, loinc]
    return {"coding": codings, "text": title}


def _status(sheet: Json) -> str:
    """The Composition status a sheet's status stands for: a draft is preliminary, a corrected sheet amended."""
    statuses = {"amended": "amended", "in-progress": "preliminary", "stopped": "preliminary",
                "entered-in-error": "entered-in-error"}
    return statuses.get(
        str(sheet.get("status")), "final"
    )


# --- resources extracted from a discharge sheet ---------------------------------------------------------------

Extracted = dict[str, dict[str, Json]]  # top-level linkId → {fullUrl: resource}


def _discharge_resources(sheet: Json, seed: tuple[str, int], subject: Json) -> Extracted:
    """An Encounter for the stay, a Condition per diagnosis and a MedicationStatement per discharge prescription —
    each only from the sections the reader can see (a withheld marker has no items to read)."""
    groups = {str(item.get("linkId")): item for item in dicts(sheet.get("item")) if not _is_withheld(item)}
    found: Extracted = {}
    basic = groups.get("discharge.basic")
    if basic is not None and (encounter := _encounter(basic, subject, sheet)) is not None:
        found["discharge.basic"] = _keyed(seed, "encounter", [encounter])
    if (medical := groups.get("discharge.medical")) is not None:
        found["discharge.medical"] = _keyed(seed, "condition", list(_conditions(medical, subject)))
    if (medication := groups.get("discharge.medication")) is not None:
        lines = answers.values(medication, "discharge.medication.prescribed")
        found["discharge.medication"] = _keyed(seed, "medication", [_medication(line, subject) for line in lines])
    return {link_id: resources for link_id, resources in found.items() if resources}


def _keyed(seed: tuple[str, int], part: str, resources: list[Json]) -> dict[str, Json]:
    keyed = {}
    for index, resource in enumerate(resources):
        identity = stable_uuid(*seed, part, index)
        keyed[f"urn:uuid:{identity}"] = {**resource, "id": identity}
    return keyed


def _extracted(extracted: Extracted) -> Iterator[tuple[str, Json]]:
    for resources in extracted.values():
        yield from resources.items()


def _stay(extracted: Extracted) -> tuple[str, Json] | None:
    """The Encounter's fullUrl and period, when the sheet gave the admission date."""
    found = next(((url, res) for url, res in _extracted(extracted) if res["resourceType"] == "Encounter"), None)
    return (found[0], dict(found[1]["period"])) if found is not None else None


def _encounter(basic: Json, subject: Json, sheet: Json) -> Json | None:
    admitted = answers.first(basic, "discharge.basic.admission-date")
    if not isinstance(admitted, str):
        return None
    discharged = answers.first(basic, "discharge.basic.discharge-date")
    period = {"start": admitted, **({"end": discharged} if isinstance(discharged, str) else {})}
    # A planned discharge date after the sheet was written means the stay is still going on.
    authored = str(sheet.get("authored") or "")[:10]
    finished = isinstance(discharged, str) and bool(authored) and discharged <= authored
    encounter: Json = {
        "resourceType": "Encounter",
        "status": "finished" if finished else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                  "display": "inpatient encounter"},
        "subject": subject,
        "period": period,
    }
    if isinstance(hospital := answers.first(basic, "discharge.basic.hospital"), str):
        encounter["serviceProvider"] = {"display": hospital}
    return encounter


def _conditions(medical: Json, subject: Json) -> Iterator[Json]:
    for diagnosis in (i for i in answers.below(medical) if i.get("linkId") == "discharge.medical.diagnosis"):
        name = answers.first(diagnosis, "discharge.medical.diagnosis.name")
        if not isinstance(name, str):
            continue
        condition: Json = {"resourceType": "Condition", "code": {"text": name}, "subject": subject}
        if answers.first(diagnosis, "discharge.medical.diagnosis.under-treatment") is True:
            condition["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
        if isinstance(onset := answers.first(diagnosis, "discharge.medical.diagnosis.onset"), str):
            condition["onsetDateTime"] = onset
        yield condition


def _medication(line: Any, subject: Json) -> Json:
    # A prescription line is free text (drug, dose, timing together): kept whole rather than parsed wrongly.
    return {"resourceType": "MedicationStatement", "status": "active",
            "medicationCodeableConcept": {"text": str(line)}, "subject": subject}


# --- emergency_summary ----------------------------------------------------------------------------------------

# (code, title, parts): each part is a top-level linkId and, optionally, the only children of it to show.
Part = tuple[str, tuple[str, ...] | None]
_EMERGENCY_SECTIONS: list[tuple[str, str, list[Part]]] = [
    ("identity", "本人情報・緊急連絡先", [("emergency.identity", None), ("emergency.contacts", None)]),
    ("team", "かかりつけ医・訪問看護・後方支援病院（24時間連絡先）",
     [("emergency.team", None), ("emergency.wishes", ("emergency.wishes.destination",))]),
    ("clinical", "病名・服薬・アレルギー・感染症", [("emergency.medical", None), ("emergency.medications", None)]),
    ("devices", "医療機器・医療処置", [("emergency.devices", None)]),
    ("baseline", "普段の状態", [("emergency.baseline", None)]),
    # A physician's order about CPR only: kept apart from the wider wishes of the ACP record below.
    ("dnar", "DNAR指示（心肺蘇生のみに関する医師の指示）", [("emergency.wishes", ("emergency.wishes.dnar",))]),
]
_ACP_PARTS: list[Part] = [
    ("acp.discussion", ("acp.discussion.date",)),
    ("acp.treatment", None),
    ("acp.place", None),
    ("acp.surrogate", None),
]
_REVIEW_PARTS: list[Part] = [("emergency.review", None)]


def emergency_summary(
    emergency: Json | None,
    acp: Json | None,
    *,
    templates: dict[str, Json],
    patient: Json | None,
    ids: dict[str, tuple[str, int]],
    base: str,
    timestamp: str,
) -> Json:
    """One compact document for an ambulance crew or a break-the-glass reader: who, whom to call, what they have,
    the DNAR order and, separately, the ACP wishes, and when it was last checked.

    ``templates`` and ``ids`` are keyed by sheet kind (``EmergencySheet``, ``AcpRecord``); ``ids`` gives each
    given sheet's (id, version), from which every generated id is derived.
    """
    base = base.rstrip("/")
    sheets = {kind: sheet for kind, sheet in (("EmergencySheet", emergency), ("AcpRecord", acp)) if sheet is not None}
    missing = [kind for kind in sheets if kind not in ids or kind not in templates]
    if missing:
        raise ValueError(f"emergency_summary needs the id, version and template of {', '.join(missing)}")
    urls = {kind: f"{base}/QuestionnaireResponse/{ids[kind][0]}" for kind in sheets}
    seed = ("emergency-summary", *sorted((kind, *ids[kind]) for kind in sheets))
    subject, patient_entries = _patient_part(patient, list(sheets.values()), base, seed)
    patient_urls = [entry["fullUrl"] for entry in patient_entries]
    emergency_parts = (emergency, templates.get("EmergencySheet"), urls.get("EmergencySheet"))
    sections = [
        _summary_section(code, title, parts, *emergency_parts, extra=patient_urls if code == "identity" else [])
        for code, title, parts in _EMERGENCY_SECTIONS
    ]
    sections.append(_acp_section(acp, templates.get("AcpRecord"), urls.get("AcpRecord")))
    sections.append(_summary_section("review", "最終確認", _REVIEW_PARTS, *emergency_parts))
    authored = [str(sheet["authored"]) for sheet in sheets.values() if sheet.get("authored")]
    authors = [_absolute(sheet["author"], base) for sheet in sheets.values() if isinstance(sheet.get("author"), dict)]
    composition = {
        **_composition_head(seed, None, "final", _summary_type(), subject),
        "date": max(authored) if authored else timestamp,
        "author": _unique(authors) or _no_author(),
        "title": "救急時サマリー",
        "section": sections,
    }
    entries = [
        _entry(f"urn:uuid:{composition['id']}", composition),
        *patient_entries,
        *(_entry(urls[kind], {**sheet, "id": ids[kind][0]}) for kind, sheet in sheets.items()),
    ]
    return _bundle(seed, timestamp, entries)


def _summary_type() -> Json:
    return {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}],
            "text": "救急時サマリー"}


def _acp_section(acp: Json | None, template: Json | None, url: str | None) -> Json:
    title = "人生会議（ACP）で確認した本人の意向"
    code = {"coding": [{"system": EMERGENCY_SECTION, "code": "acp", "display": title},
                       {"system": LOINC, "code": "42348-3", "display": "Advance directives"}], "text": title}
    if acp is None or template is None or url is None:
        return _empty_section(title, code, "unavailable", "人生会議（ACP）の記録はありません")
    return _parts_section(title, code, _ACP_PARTS, acp, template, [url])


def _summary_section(
    code: str, title: str, parts: list[Part], sheet: Json | None, template: Json | None, url: str | None,
    extra: list[str] | None = None,
) -> Json:
    concept = {"coding": [{"system": EMERGENCY_SECTION, "code": code, "display": title}], "text": title}
    if sheet is None or template is None or url is None:
        return _empty_section(title, concept, "unavailable", "急変時情報共有シートがありません")
    return _parts_section(title, concept, parts, sheet, template, [*(extra or []), url])


def _parts_section(title: str, code: Json, parts: list[Part], sheet: Json, template: Json, sources: list[str]) -> Json:
    """A section drawn from some top-level groups (or some children of them) of one sheet."""
    groups = {str(node.get("linkId")): node for node in dicts(template.get("item"))}
    bodies: list[str] = []
    notes: list[str] = []  # one line per withheld part, so a reader knows something is there
    for link_id, only in parts:
        group = groups.get(link_id, {"linkId": link_id})
        found = [item for item in dicts(sheet.get("item")) if item.get("linkId") == link_id]
        if any(_is_withheld(item) for item in found):
            notes.append(f"<li>{_escape(_part_label(group, only))}: {_WITHHELD_NOTE}</li>")
            continue
        nodes = [n for n in dicts(group.get("item")) if only is None or n.get("linkId") in only]
        children = [child for item in found for child in dicts(item.get("item"))
                    if only is None or child.get("linkId") in only]
        body = _render_items(children, nodes)
        if body and len(parts) > 1 and only is None:
            # Several whole groups in one section: each under its own heading.
            body = f"<ul><li>{_escape(str(group.get('text') or link_id))}{body}</li></ul>"
        bodies += [body] if body else []
    if not bodies:
        return _empty_section(title, code, "withheld" if notes else "unavailable")
    body = "".join(bodies) + (f"<ul>{''.join(notes)}</ul>" if notes else "")
    return {"title": title, "code": code, "text": _narrative(body), "entry": [{"reference": u} for u in sources]}


def _part_label(group: Json, only: tuple[str, ...] | None) -> str:
    if only is not None:
        child = next((n for n in dicts(group.get("item")) if n.get("linkId") == only[0]), None)
        if child is not None:
            return str(child.get("text") or only[0])
    return str(group.get("text") or group.get("linkId"))


# --- discharge_draft ------------------------------------------------------------------------------------------


# --- shared pieces --------------------------------------------------------------------------------------------


def _composition_head(seed: tuple[Any, ...], version: int | None, status: str, kind: Json, subject: Json) -> Json:
    identity = stable_uuid(*seed, "composition")
    head: Json = {"resourceType": "Composition", "id": identity, "language": "ja"}
    if version is not None:
        # JP-CLINS documents carry their version this way; ours is the sheet version.
        head["extension"] = [{"url": VERSION_NUMBER, "valueString": str(version)}]
    return {**head, "identifier": {"system": URI, "value": f"urn:uuid:{identity}"}, "status": status,
            "type": kind, "subject": subject}


def _bundle(seed: tuple[Any, ...], timestamp: str, entries: list[Json]) -> Json:
    """The document Bundle; its id is the uuid5 of the seed, and its identifier says the same as a URN."""
    identity = stable_uuid(*seed, "bundle")
    return {
        "resourceType": "Bundle",
        "id": identity,
        "identifier": {"system": URI, "value": f"urn:uuid:{identity}"},
        "type": "document",
        "timestamp": timestamp,
        "entry": entries,
    }


def _entry(full_url: str, resource: Json) -> Json:
    return {"fullUrl": full_url, "resource": resource}


def _patient_part(
    patient: Json | None, sheets: list[Json], base: str, seed: tuple[Any, ...]
) -> tuple[Json, list[Json]]:
    """The subject reference and the Patient's entry (none without a Patient, the sheets' subject then).

    Absolute: generated resources have urn:uuid fullUrls, against which a relative ``Patient/x`` resolves to
    nothing."""
    if patient is not None:
        url = f"{base}/Patient/{patient['id']}" if patient.get("id") else f"urn:uuid:{stable_uuid(*seed, 'patient')}"
        return {"reference": url}, [_entry(url, patient)]
    for sheet in sheets:
        if isinstance(sheet.get("subject"), dict):
            return _absolute(sheet["subject"], base), []
    raise ValueError("a document needs a patient: give the Patient or a sheet with a subject")


def _absolute(reference: Json, base: str) -> Json:
    target = reference.get("reference")
    if isinstance(target, str) and not re.match(r"^([a-z][a-z0-9+.-]*:|#)", target):
        return {**reference, "reference": f"{base}/{target}"}
    return dict(reference)


def _no_author() -> list[Json]:
    # Composition.author is required; a sheet without one still says so rather than invent a person.
    return [{"display": "記入者不明"}]


def _unique(references: list[Json]) -> list[Json]:
    seen: list[Json] = []
    for reference in references:
        if reference not in seen:
            seen.append(reference)
    return seen


def _empty_section(title: str, code: Json, reason: str, note: str | None = None) -> Json:
    """A section with nothing to show; the text says why, since a section needs text, entries or sub-sections."""
    shown = note or (_WITHHELD_NOTE if reason == "withheld" else _UNAVAILABLE_NOTE)
    return {
        "title": title,
        "code": code,
        "text": _narrative(f"<p>{_escape(shown)}</p>"),
        "emptyReason": {"coding": [{"system": EMPTY_REASON, "code": reason}]},
    }


def _narrative(body: str) -> Json:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _render_items(items: Any, nodes: Any) -> str:
    """A list of answered items with their template's Japanese labels; items the template lacks are left out,
    since a label is all that tells a reader what an answer means."""
    by_id = {node.get("linkId"): node for node in dicts(nodes)}
    rendered = [_render_item(item, by_id[item.get("linkId")]) for item in dicts(items) if item.get("linkId") in by_id]
    shown = "".join(piece for piece in rendered if piece)
    return f"<ul>{shown}</ul>" if shown else ""


def _render_item(item: Json, node: Json) -> str:
    label = _escape(str(node.get("text") or node.get("linkId")))
    if node.get("type") == "group":
        inner = _render_items(item.get("item"), node.get("item"))
        return f"<li>{label}{inner}</li>" if inner else ""
    answers = dicts(item.get("answer"))
    shown = [text for answer in answers if (text := _answer_text(answer, node))]
    if not shown:
        return ""
    nested = "".join(_render_items(answer.get("item"), node.get("item")) for answer in answers)
    return f"<li>{label}: {'、'.join(shown)}{nested}</li>"


def _answer_text(answer: Json, node: Json) -> str:
    """One answer as escaped XHTML text; a coding shows its display (the template's when the answer has none)."""
    key, value = next(((k, v) for k, v in answer.items() if k.startswith("value")), ("", None))
    match key, value:
        case "valueBoolean", bool():
            return "はい" if value else "いいえ"
        case "valueCoding", dict():
            return _escape(_coding_display(value, node))
        case "valueQuantity", dict():
            return _escape(f"{value.get('value', '')} {value.get('unit') or value.get('code') or ''}".strip())
        case "valueReference", dict():
            return _escape(str(value.get("display") or value.get("reference") or ""))
        case "valueAttachment", dict():
            return _escape(str(value.get("title") or "添付ファイルあり"))
        case _, None:
            return ""
    return _escape(str(value))


def _coding_display(coding: Json, node: Json) -> str:
    if coding.get("display"):
        return str(coding["display"])
    for option in dicts(node.get("answerOption")):
        known = option.get("valueCoding") or {}
        if (known.get("system"), known.get("code")) == (coding.get("system"), coding.get("code")):
            return str(known.get("display") or coding.get("code"))
    return str(coding.get("code") or "")


def _escape(text: str) -> str:
    """Text for the XHTML narrative: markup escaped, line breaks kept."""
    return "<br/>".join(html.escape(line) for line in text.split("\n"))


def _is_withheld(item: Json) -> bool:
    return any(isinstance(e, dict) and e.get("url") == WITHHELD_EXTENSION for e in item.get("extension") or [])
