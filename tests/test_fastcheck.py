"""services/share/store/fastcheck.py may only say "valid" of what fhir.resources accepts.

Every valid example sheet, every shipped template and a few resources of other types are mutated thousands of
times — values swapped for tricky ones (blank text, impossible dates, out-of-range integers, nulls, the wrong JSON
kind), keys dropped, added, renamed to a primitive's ``_extension`` or a Python field name, lists emptied, wrapped
and unwrapped, second types given to choice elements — and each mutant the quick check calls valid must pass the
library's model validation. The quick check must also recognise the real resources, or it would never save anything.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fixtures import full_sheet, patient, sheet
from services.kit.errors import BadRequest
from services.share.sheets import scenes
from services.share.sheets.records import Member
from services.share.store.fastcheck import surely_valid
from services.share.store.validation import validate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples"

TRICKY: list[Any] = [
    "", " ", "\n\t", "\x1c", "\u3000", "a", " 訪問 ", "a b", "a  b", "a\nb", "-", "urn:uuid:0b1d", "http://x y",
    "2026", "2026-11", "2026-11-05", "2026-02-30", "2026-13-01", "0000-01-01", "2026-11-05T09:00:00+09:00",
    "2026-11-05T09:00:00", "2026-11-05T24:00:00Z", "2026-11-05T09:00:60Z", "09:30:00", "24:00:00", "09:30",
    "01", "-0", "1e400", "true", "final", "Patient/p1", "#x", "a" * 65,
    0, -1, 1, 7, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 10**40, 1.5, -0.0, 1e-7, 1e300, float("inf"),
    True, False, None, [], {}, [None], ["a"], [{}], [1], {"a": 1}, {"resourceType": "Patient"},
    {"url": "urn:x", "valueString": "x"}, {"system": "urn:x", "code": "c"}, {"reference": "Patient/p1"},
]
KEYS = ["valueString", "valueInteger", "valueBoolean", "valueCoding", "valueDate", "_linkId", "_status",
        "fhir_comments", "resourceType", "resource_type", "extension", "modifierExtension", "id", "text", "code",
        "system", "url", "item", "answer", "linkId", "status", "display", "reference", "contained", "class_fhir",
        "meta", "div", "language", "unknownElement"]


def _bases() -> list[dict[str, Any]]:
    sheets = [orjson.loads(path.read_bytes()) for path in sorted(EXAMPLES.glob("*/valid-*.json"))]
    templates = [orjson.loads(path.read_bytes()) for path in sorted((ROOT / "schemas").glob("**/*.json"))
                 if b'"resourceType": "Questionnaire"' in path.read_bytes()[:400]]
    observation = {
        "resourceType": "Observation", "status": "final", "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-01T09:00:00+09:00",
        "valueQuantity": {"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [{"code": {"text": "sys"}, "valueInteger": 120}, {"code": {"text": "dia"}, "valueInteger": 80}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">脈拍 72</div>"},
    }
    communication = {
        "resourceType": "Communication", "status": "completed", "subject": {"reference": "Patient/p1"},
        "priority": "urgent", "sent": "2026-11-05T09:00:00.123Z",
        "payload": [{"contentString": "訪問しました"}, {"contentAttachment": {"contentType": "image/png",
                                                                        "size": 10, "data": "aGVsbG8="}}],
    }
    members = [Member("practitioner", "cm1", "care-manager", None, None),
               Member("practitioner", "doc1", "primary-physician", None, None)]
    tasks = [task for _, task in scenes.acknowledgement_tasks(members, "s1", "p1", sheet("p1", "a1", 3), "org1")]
    return [*sheets, *templates, *map(_without_extensions, templates), sheet("p1", "a1", 3),
            full_sheet("p1", "a1", 4), patient(4), observation, communication, *tasks]


def _without_extensions(node: Any) -> Any:
    """The resource without its primitives' ``_extension`` siblings (a template without its translations)."""
    if isinstance(node, dict):
        return {key: _without_extensions(value) for key, value in node.items() if not key.startswith("_")}
    return [_without_extensions(value) for value in node] if isinstance(node, list) else node


BASES = _bases()


def _library_accepts(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:  # any refusal: a ValidationError, or the ValueError some checks raise
        return False
    return True


def _containers(node: Any) -> list[Any]:
    found = [node] if isinstance(node, dict | list) else []
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else []:
        found += _containers(child)
    return found


def _mutate(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One or two edits anywhere in the resource; its type stays (the store checks it against the URL first)."""
    resource = copy.deepcopy(base)
    for _ in range(rng.randint(1, 2)):
        target = rng.choice(_containers(resource))
        move = rng.randrange(6)
        if isinstance(target, list):
            if move == 0:
                target.clear()
            elif move == 1 and target:
                target.pop(rng.randrange(len(target)))
            elif move == 2 and target:
                target.append(copy.deepcopy(rng.choice(target)))
            else:
                target.insert(rng.randrange(len(target) + 1), copy.deepcopy(rng.choice(TRICKY)))
        elif isinstance(target, dict) and target:
            key = rng.choice(sorted(target))
            if key == "resourceType" and target is resource:
                continue  # the type is checked before either validator runs
            if move == 0:
                del target[key]
            elif move == 1:
                target[key] = copy.deepcopy(rng.choice(TRICKY))
            elif move == 2:
                target[rng.choice(KEYS)] = copy.deepcopy(rng.choice(TRICKY))
            elif move == 3:
                value = target[key]
                target[key] = value[0] if isinstance(value, list) and value else [value]
            elif move == 4:
                target["_" + key] = {"extension": [{"url": "urn:x", "valueString": "x"}]}
            else:
                target[key + "_fhir" if rng.random() < 0.5 else key + "__ext"] = target.pop(key)
    resource["resourceType"] = base["resourceType"]
    return resource


def test_every_real_resource_is_recognised() -> None:
    """The example sheets and fixtures are valid, and the quick check says so without the library. (Templates are
    valid too, but their translations sit in primitives' ``_text`` extensions: those go to the library.)"""
    assert len(BASES) > 20
    for base in BASES:
        assert _library_accepts(base), base.get("id")
        if '"_text"' in orjson.dumps(base).decode():
            assert not surely_valid(base["resourceType"], base)
        else:
            assert surely_valid(base["resourceType"], base), (base["resourceType"], base.get("id"))


def test_what_it_calls_valid_the_library_accepts() -> None:
    rng = random.Random(20261205)
    recognised = refused_by_library = 0
    for _ in range(3000):
        base = rng.choice(BASES)
        mutant = _mutate(base, rng)
        if surely_valid(mutant["resourceType"], mutant):
            recognised += 1
            assert _library_accepts(mutant), orjson.dumps(mutant).decode()[:2000]
        elif not _library_accepts(mutant):
            refused_by_library += 1
    # Both sides were exercised: mutants it vouched for, and mutants the library refused.
    assert recognised > 200 and refused_by_library > 1000, (recognised, refused_by_library)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(BASES) - 1), seed=st.integers(0, 2**32 - 1))
def test_vouched_mutants_are_valid(index: int, seed: int) -> None:
    mutant = _mutate(BASES[index], random.Random(seed))
    if surely_valid(mutant["resourceType"], mutant):
        assert _library_accepts(mutant)


@pytest.mark.parametrize("body", [
    {"resourceType": "Patient", "birthDate": "2026-02-30"},
    {"resourceType": "Patient", "name": [{"family": " "}]},
    {"resourceType": "Patient", "gender": "fe  male"},
    {"resourceType": "Patient", "_gender": {"extension": [{"url": "urn:x", "valueString": "x"}]}},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": 2**31},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a", "valueInteger": 1},
    {"resourceType": "Task", "status": "requested"},
    {"resourceType": "Patient", "contained": [{"resourceType": "Patient"}]},
    {"resourceType": "Patient", "name": []},
    {"resourceType": "Patient", "active": "true"},
])
def test_doubtful_bodies_go_to_the_library(body: dict[str, Any]) -> None:
    """Each of these is decided by the library (some it accepts, most it refuses); the store still refuses what
    the library refuses."""
    assert not surely_valid(body["resourceType"], body)
    if not _library_accepts(body):
        with pytest.raises(BadRequest) as refused:
            validate(copy.deepcopy(body))
        assert refused.value.code == "invalid_resource"


def test_switched_off_with_the_speedups() -> None:
    """RENKEI_FHIR_SPEEDUPS=0 leaves validation to the library alone (for comparison), this check included."""
    program = ("from bench.fixtures import sheet; from services.share.store.fastcheck import surely_valid; "
               "print(surely_valid('QuestionnaireResponse', sheet('p1', 'a1', 3)))")
    for setting, expected in (("0", "False"), ("1", "True")):
        done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "RENKEI_FHIR_SPEEDUPS": setting})
        assert done.stdout.strip() == expected
