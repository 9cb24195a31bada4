"""The example sheets in ``schemas/examples`` are what their names say.

Every file parses as an R4B QuestionnaireResponse. Each ``valid-*.json`` passes ``validate_response`` against the
template it names and carries Japanese text in its string answers (so no placeholder stands in for real content);
each ``invalid-*.json`` gets exactly the issues ``expected-issues.json`` lists for it, as (code, linkId) pairs.
Every template has at least two valid and three invalid examples, and the expected issues name exactly the invalid
files. A change to a template or to the validator that breaks a realistic sheet therefore shows up here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from services.kit.settings import REPO_ROOT
from services.share.sheets.validation import validate_response

EXAMPLES = REPO_ROOT / "schemas" / "examples"
TEMPLATES = REPO_ROOT / "schemas" / "questionnaires"
FILES = sorted(EXAMPLES.glob("*/*.json"))
VALID = [path for path in FILES if path.name.startswith("valid-")]
INVALID = [path for path in FILES if path.name.startswith("invalid-")]
EXPECTED: dict[str, list[dict[str, str | None]]] = orjson.loads((EXAMPLES / "expected-issues.json").read_bytes())
# Japanese script, or an answer that is only a number (a phone or insurance number, a time).
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
NUMBER_ONLY = re.compile(r"[\d\s()+\-./:]+")

def name(path: Path) -> str:
    return path.relative_to(EXAMPLES).as_posix()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def issues_of(path: Path) -> list[tuple[str, str]]:
    issues = validate_response(load(path), load(TEMPLATES / f"{path.parent.name}.json"))
    return sorted((issue.code, issue.link_id or "") for issue in issues)


def string_answers(items: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for item in items:
        found += string_answers(item.get("item", []))
        for answer in item.get("answer", []):
            found += [answer["valueString"]] if "valueString" in answer else []
            found += string_answers(answer.get("item", []))
    return found


@pytest.mark.parametrize("path", FILES, ids=name)
def test_each_example_is_an_r4b_questionnaire_response(path: Path) -> None:
    QuestionnaireResponse.model_validate(load(path))


@pytest.mark.parametrize("path", VALID, ids=name)
def test_a_valid_example_has_no_issues(path: Path) -> None:
    assert issues_of(path) == []


@pytest.mark.parametrize("path", VALID, ids=name)
def test_a_valid_example_is_written_in_japanese(path: Path) -> None:
    strings = string_answers(load(path)["item"])
    assert strings
    assert [s for s in strings if not (JAPANESE.search(s) or NUMBER_ONLY.fullmatch(s))] == []


@pytest.mark.parametrize("path", INVALID, ids=name)
def test_an_invalid_example_has_exactly_its_expected_issues(path: Path) -> None:
    expected = sorted((str(issue["code"]), issue["linkId"] or "") for issue in EXPECTED[name(path)])
    assert issues_of(path) == expected


def test_every_template_has_examples_and_every_invalid_one_its_expected_issues() -> None:
    assert len(VALID) + len(INVALID) == len(FILES), "examples are named valid-*.json or invalid-*.json"
    for template in sorted(TEMPLATES.glob("*.json")):
        assert len([p for p in VALID if p.parent.name == template.stem]) >= 2, template.stem
        assert len([p for p in INVALID if p.parent.name == template.stem]) >= 3, template.stem
    assert set(EXPECTED) == {name(path) for path in INVALID}
    assert {path.parent.name for path in FILES} <= {template.stem for template in TEMPLATES.glob("*.json")}
