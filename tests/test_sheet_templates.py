"""The shipped sheet templates are valid, and each rule of ``renkei templates check`` catches its kind of mistake."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.kit.codes import SECTION_LABEL_EXTENSION, SHEET_KIND
from services.kit.settings import REPO_ROOT
from services.share.sheets.templates import Problem, check_directory
from tests.test_cli import run

SCHEMAS = REPO_ROOT / "schemas"
SHIPPED = SCHEMAS / "questionnaires"
NAMES = {"AdmissionInfo", "DischargeSheet", "EmergencySheet", "AcpRecord", "DailyCareNote"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from walk(item.get("item") or [])


def find(template: dict[str, Any], link_id: str) -> dict[str, Any]:
    return next(item for item in walk(template["item"]) if item["linkId"] == link_id)


def broken(tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None]) -> list[Problem]:
    """The problems of a copy of the shipped templates in which one template was changed."""
    directory = tmp_path / "questionnaires"
    shutil.copytree(SHIPPED, directory)
    template = load(directory / f"{name}.json")
    change(template)
    (directory / f"{name}.json").write_bytes(orjson.dumps(template))
    return check_directory(directory, SCHEMAS)


def test_the_shipped_templates_are_valid() -> None:
    assert check_directory(SHIPPED, SCHEMAS) == []
    templates = [load(path) for path in sorted(SHIPPED.glob("*.json"))]
    assert {t["name"] for t in templates} == NAMES
    for template in templates:
        assert template["url"] == f"urn:renkei:questionnaire:{template['name']}"
        assert template["version"] == "1.0.0"
        kinds = [c["code"] for c in template["code"] if c["system"] == SHEET_KIND]
        assert kinds == [template["name"]]
        for section in template["item"]:
            assert [e["url"] for e in section["extension"]].count(SECTION_LABEL_EXTENSION) == 1


def test_the_emergency_sheet_keeps_the_dnar_order_apart_from_acp_wishes() -> None:
    emergency = load(SHIPPED / "EmergencySheet.json")
    dnar = find(emergency, "emergency.wishes.dnar")
    assert [i["linkId"] for i in dnar["item"]] == [
        "emergency.wishes.dnar.ordered", "emergency.wishes.dnar.physician", "emergency.wishes.dnar.date"]
    assert find(emergency, "emergency.wishes.acp-record")["type"] == "reference"
    assert find(emergency, "emergency.team.primary.phone-24h")["required"] is True


def test_daily_vitals_carry_loinc_codes() -> None:
    note = load(SHIPPED / "DailyCareNote.json")
    codes = {c["code"] for item in walk(note["item"]) for c in item.get("code") or []
             if c["system"] == "http://loinc.org"}
    assert codes == {"8310-5", "85354-9", "8480-6", "8462-4", "8867-4", "59408-5", "9279-1"}


def duplicate_link_id(template: dict[str, Any]) -> None:
    find(template, "emergency.identity.kana")["linkId"] = "emergency.identity.name"


def dangling_enable_when(template: dict[str, Any]) -> None:
    find(template, "acp.surrogate.name")["enableWhen"][0]["question"] = "acp.surrogate.nobody"


def unknown_answer_code(template: dict[str, Any]) -> None:
    find(template, "daily.sleep.state")["answerOption"][0]["valueCoding"]["code"] = "snoring"


def unknown_answer_system(template: dict[str, Any]) -> None:
    find(template, "admission.function.adl.eating")["answerOption"][0]["valueCoding"]["system"] = "urn:example:adl"


def unknown_label(template: dict[str, Any]) -> None:
    find(template, "discharge.mental")["extension"][0]["valueCoding"]["code"] = "secret"


def missing_label(template: dict[str, Any]) -> None:
    find(template, "admission.physician")["extension"] = []


def two_labels(template: dict[str, Any]) -> None:
    section = find(template, "emergency.contacts")
    section["extension"].append(section["extension"][0])


def nested_label(template: dict[str, Any]) -> None:
    find(template, "acp.views.patient")["extension"] = find(template, "acp.views")["extension"]


def no_english(template: dict[str, Any]) -> None:
    del find(template, "daily.pain.nrs")["_text"]


@pytest.mark.parametrize(("name", "change", "link_id", "words"), [
    ("EmergencySheet", duplicate_link_id, "emergency.identity.name", "more than one item"),
    ("AcpRecord", dangling_enable_when, "acp.surrogate.name", "acp.surrogate.nobody"),
    ("DailyCareNote", unknown_answer_code, "daily.sleep.state", "'snoring'"),
    ("AdmissionInfo", unknown_answer_system, "admission.function.adl.eating", "urn:example:adl"),
    ("DischargeSheet", unknown_label, "discharge.mental", "'secret'"),
    ("AdmissionInfo", missing_label, "admission.physician", "exactly one sensitivity label, has 0"),
    ("EmergencySheet", two_labels, "emergency.contacts", "exactly one sensitivity label, has 2"),
    ("AcpRecord", nested_label, "acp.views.patient", "only top-level"),
    ("DailyCareNote", no_english, "daily.pain.nrs", "English"),
])
def test_a_broken_template_is_reported_at_its_link_id(
    tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None], link_id: str, words: str,
) -> None:
    problems = broken(tmp_path, name, change)
    assert [(p.file, p.link_id) for p in problems] == [(f"{name}.json", link_id)]
    assert words in problems[0].message


def test_an_unknown_sheet_kind_and_a_missing_version_are_reported(tmp_path: Path) -> None:
    def change(template: dict[str, Any]) -> None:
        template["code"][0]["code"] = "Referral"
        del template["version"]

    messages = sorted(p.message for p in broken(tmp_path, "DischargeSheet", change))
    assert messages == ["the Questionnaire has no version", f"unknown code 'Referral' in {SHEET_KIND}"]


def test_a_file_that_is_no_valid_questionnaire_is_reported(tmp_path: Path) -> None:
    def change(template: dict[str, Any]) -> None:
        find(template, "acp.views.patient")["requird"] = True  # a misspelt field is no FHIR element

    problems = broken(tmp_path, "AcpRecord", change)
    assert len(problems) == 1 and "not a valid R4B Questionnaire" in problems[0].message


def test_two_templates_with_the_same_name_and_version_are_reported(tmp_path: Path) -> None:
    directory = tmp_path / "questionnaires"
    shutil.copytree(SHIPPED, directory)
    variant = load(directory / "AdmissionInfo.json")
    variant["url"] = "urn:example:midori:AdmissionInfo"
    (directory / "Midori-AdmissionInfo.json").write_bytes(orjson.dumps(variant))
    problems = check_directory(directory, SCHEMAS)
    assert [(p.file, p.link_id) for p in problems] == [("Midori-AdmissionInfo.json", None)]
    assert "'AdmissionInfo'" in problems[0].message and "AdmissionInfo.json" in problems[0].message
    variant["version"] = "1.0.0-midori"
    (directory / "Midori-AdmissionInfo.json").write_bytes(orjson.dumps(variant))
    assert check_directory(directory, SCHEMAS) == []


def test_the_command_checks_a_directory(tmp_path: Path) -> None:
    good = run(["templates", "check", str(SHIPPED)], tmp_path / "data")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "5 template(s)" in good.stdout
    directory = tmp_path / "questionnaires"
    shutil.copytree(SHIPPED, directory)
    template = load(directory / "EmergencySheet.json")
    duplicate_link_id(template)
    (directory / "EmergencySheet.json").write_bytes(orjson.dumps(template))
    bad = run(["templates", "check", str(directory)], tmp_path / "data")
    assert bad.returncode == 1
    assert "EmergencySheet.json [emergency.identity.name]" in bad.stdout
    assert "1 problem(s)" in bad.stdout
