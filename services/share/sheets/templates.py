"""Sheet templates: FHIR R4B Questionnaires in ``schemas/questionnaires``, one file each.

Templates are data, so a region can bring its own variant without a release; this module is what stands between
such a file and the sheets filled against it. ``check_directory`` reports every problem it finds (file, linkId,
message) instead of stopping at the first, so one run of ``renkei templates check`` shows all that needs fixing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fhir.resources.R4B.questionnaire import Questionnaire
from pydantic import ValidationError

from services.kit.codes import SECTION_LABEL_EXTENSION, SENSITIVITY_LABEL, SHEET_KIND, load_code_systems

TRANSLATION_EXTENSION = "http://hl7.org/fhir/StructureDefinition/translation"

# Standard systems a template may take answer codes from. The project holds no copy of them, so their codes are
# not checked; listing them here keeps a typing slip in a system URL from passing as "some standard system".
STANDARD_SYSTEMS = frozenset({
    "http://hl7.org/fhir/administrative-gender",
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://unitsofmeasure.org",
})


@dataclass(frozen=True)
class Problem:
    file: str
    link_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file} [{self.link_id}]" if self.link_id else self.file
        return f"{where}: {self.message}"


def template_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def check_directory(directory: Path, schemas_dir: Path) -> list[Problem]:
    """Every problem of every template in ``directory``, checked against the code systems of ``schemas_dir``."""
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}
    for path in template_files(directory):
        raw, file_problems = check_file(path, schemas_dir)
        problems += file_problems
        if raw is None:
            continue
        # Sheets name their template by url|version and clients find it by name: two files claiming the same
        # (name, version) would make which one a sheet was validated against a matter of file order.
        key = (str(raw.get("name")), str(raw.get("version")))
        if key in seen:
            problems.append(Problem(path.name, None, f"name {key[0]!r} version {key[1]!r} is also in {seen[key]}"))
        else:
            seen[key] = path.name
    return problems


def check_file(path: Path, schemas_dir: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """One template's raw JSON (None if it is no Questionnaire at all) and its problems."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        return None, [Problem(path.name, None, f"not valid JSON: {error}")]
    if not isinstance(raw, dict) or raw.get("resourceType") != "Questionnaire":
        return None, [Problem(path.name, None, "not a Questionnaire")]
    try:
        Questionnaire.model_validate(raw)
    except ValidationError as error:
        return None, [Problem(path.name, None, f"not a valid R4B Questionnaire: {_first_error(error)}")]
    return raw, list(questionnaire_problems(path.name, raw, schemas_dir))


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']} ({error.error_count()} error(s))"


def questionnaire_problems(file: str, raw: dict[str, Any], schemas_dir: Path) -> Iterator[Problem]:
    checker = _Checker(file, schemas_dir)
    yield from checker.identity(raw)
    yield from checker.sheet_kind(raw)
    items = list(_walk(raw.get("item") or []))
    yield from checker.link_ids(items)
    link_ids = {item.get("linkId") for item, _ in items}
    for item, depth in items:
        yield from checker.item(item, depth, link_ids)


def _walk(items: list[Any], depth: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
    """Every item with its depth (0: a top-level section), parents before children."""
    for item in items:
        yield item, depth
        yield from _walk(item.get("item") or [], depth + 1)


class _Checker:
    """The rules, one method each; each yields its problems so that none hides another."""

    def __init__(self, file: str, schemas_dir: Path) -> None:
        self.file = file
        self.systems = load_code_systems(schemas_dir)

    def problem(self, link_id: Any, message: str) -> Problem:
        return Problem(self.file, str(link_id) if link_id is not None else None, message)

    def identity(self, raw: dict[str, Any]) -> Iterator[Problem]:
        # url + version is how a sheet names the exact template it was filled against.
        for field in ("name", "url", "version"):
            if not raw.get(field):
                yield self.problem(None, f"the Questionnaire has no {field}")

    def sheet_kind(self, raw: dict[str, Any]) -> Iterator[Problem]:
        # The permission matrix grants sheets by kind, so a template without one could be read by nobody.
        kinds = [coding for coding in raw.get("code") or [] if coding.get("system") == SHEET_KIND]
        if len(kinds) != 1:
            yield self.problem(None, f"needs exactly one code of {SHEET_KIND}, has {len(kinds)}")
            return
        message = self.unknown_code(kinds[0])
        if message:
            yield self.problem(None, message)

    def link_ids(self, items: list[tuple[dict[str, Any], int]]) -> Iterator[Problem]:
        # Answers, enableWhen and withheld sections all point at linkIds: one that names two items is ambiguous.
        seen: set[Any] = set()
        for item, _ in items:
            link_id = item.get("linkId")
            if link_id in seen:
                yield self.problem(link_id, "linkId is used by more than one item")
            seen.add(link_id)

    def item(self, item: dict[str, Any], depth: int, link_ids: set[Any]) -> Iterator[Problem]:
        link_id = item.get("linkId")
        if item.get("text") and not _has_english(item):
            yield self.problem(link_id, "text has no English translation")
        for condition in item.get("enableWhen") or []:
            if condition.get("question") not in link_ids:
                yield self.problem(link_id, f"enableWhen names no item: {condition.get('question')!r}")
            elif "answerCoding" in condition and (message := self.unknown_code(condition["answerCoding"])):
                yield self.problem(link_id, f"enableWhen: {message}")
        for option in item.get("answerOption") or []:
            if "valueCoding" in option and (message := self.unknown_code(option["valueCoding"])):
                yield self.problem(link_id, f"answerOption: {message}")
        yield from self.label(item, depth)

    def label(self, item: dict[str, Any], depth: int) -> Iterator[Problem]:
        """Top-level sections carry exactly one sensitivity label; nothing else does, since access decisions read
        labels only on top-level items (services/share/access/layout.py) and a nested one would protect nothing."""
        link_id = item.get("linkId")
        labels = [e for e in item.get("extension") or [] if e.get("url") == SECTION_LABEL_EXTENSION]
        if depth > 0:
            if labels:
                yield self.problem(link_id, "only top-level sections carry a sensitivity label")
            return
        if item.get("type") != "group":
            # An unlabelled top-level answer could never be withheld from a reader who may not see it.
            yield self.problem(link_id, "a top-level item must be a group (a labelled section)")
        if len(labels) != 1:
            yield self.problem(link_id, f"a section needs exactly one sensitivity label, has {len(labels)}")
            return
        coding = labels[0].get("valueCoding") or {}
        if coding.get("system") != SENSITIVITY_LABEL:
            yield self.problem(link_id, f"the section label is not from {SENSITIVITY_LABEL}")
        elif message := self.unknown_code(coding):
            yield self.problem(link_id, message)

    def unknown_code(self, coding: dict[str, Any]) -> str | None:
        """Why a coding does not resolve, or None if it does."""
        system, code = coding.get("system"), coding.get("code")
        if system in STANDARD_SYSTEMS:
            return None if code else f"a coding of {system} has no code"
        known = self.systems.get(str(system))
        if known is None:
            return f"unknown code system {system!r} (not in schemas/codesystems nor a listed standard system)"
        return None if code in known else f"unknown code {code!r} in {system}"


def _has_english(item: dict[str, Any]) -> bool:
    return english_text(item) is not None


def english_text(item: dict[str, Any]) -> str | None:
    """The English translation of an item's text (the translation extension on ``_text``), if it has one."""
    text = item.get("_text")
    for extension in (text.get("extension") or []) if isinstance(text, dict) else []:
        if not isinstance(extension, dict) or extension.get("url") != TRANSLATION_EXTENSION:
            continue
        parts = {part.get("url"): part for part in extension.get("extension") or [] if isinstance(part, dict)}
        content = parts.get("content", {}).get("valueString")
        if parts.get("lang", {}).get("valueCode") == "en" and content:
            return str(content)
    return None
