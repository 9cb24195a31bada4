"""services/share/fhir_speedups.py must change how fast resources validate, never what they validate to.

A corpus of valid and broken resources is validated here (replacements installed) and in a child process that
runs fhir_core's own checks (RENKEI_FHIR_SPEEDUPS=0); every outcome, accepted or refused and each error's type,
location and message, must be identical.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from bench.fixtures import patient, sheet
from services.share import fhir_speedups

ROOT = Path(__file__).resolve().parents[1]


def _bases() -> list[dict[str, Any]]:
    observation = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-01T09:00:00+09:00",
        "valueQuantity": {"value": 72, "unit": "/min"},
        "component": [{"code": {"text": "sys"}, "valueInteger": 120}, {"code": {"text": "dia"}, "valueInteger": 80}],
    }
    communication = {
        "resourceType": "Communication", "status": "completed", "subject": {"reference": "Patient/p1"},
        "payload": [{"contentString": "訪問しました"}, {"contentString": "血圧安定"}],
    }
    return [sheet("p1", "a1", 3), patient(4), observation, communication]


def _lists(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every list and dict in a JSON tree."""
    found = [path] if isinstance(node, dict | list) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in children:
        found += _lists(value, (*path, key))
    return found


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _mutate(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One or two edits that each of the three checks refuses, or that they must let through."""
    resource = copy.deepcopy(base)
    for _ in range(rng.randint(1, 2)):
        target = _at(resource, rng.choice(_lists(resource)))
        move = rng.randrange(6)
        if isinstance(target, list):
            if move < 3:
                target.insert(rng.randrange(len(target) + 1), None)  # a null inside a list
            elif target:
                target.pop(rng.randrange(len(target)))
        elif isinstance(target, dict) and target:
            key = rng.choice(sorted(target))
            if move == 0 and key != "resourceType":
                del target[key]  # maybe a required element, maybe one side of a choice
            elif move == 1:
                target[key] = None  # a required primitive set to null
            elif move == 2 and key != "resourceType":
                target["_" + key] = {"extension": [{"url": "urn:x", "valueString": "unknown"}]}
                target[key] = None  # a primitive present only as its extension
            elif move == 3:
                target["valueString"] = "x"  # a second type for a choice element, or one where none belongs
            elif move == 4:
                target["valueInteger"] = 3
            else:
                target.pop("valueString", None)
    return resource


def corpus() -> list[dict[str, Any]]:
    rng = random.Random(20261201)
    bases = _bases()
    return bases + [_mutate(rng.choice(bases), rng) for _ in range(400)]


def outcomes(resources: list[dict[str, Any]]) -> list[Any]:
    found: list[Any] = []
    for resource in resources:
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            found.append("ok")
        except ValidationError as error:
            found.append([[e["type"], [str(p) for p in e["loc"]], e["msg"]] for e in error.errors()])
        except (ValueError, TypeError, KeyError, AssertionError) as error:
            found.append(f"{type(error).__name__}: {error}")
    return found


def test_the_replacements_are_what_validates() -> None:
    assert fhir_speedups.installed()
    for name in ("QuestionnaireResponse", "Observation", "Patient"):
        bound = get_fhir_model_class(name).__pydantic_decorators__.model_validators["reject_null_complex_elements"]
        assert bound.func.__func__ is fhir_speedups.reject_null_complex_elements


def test_outcomes_are_the_librarys_own() -> None:
    resources = corpus()
    fast = outcomes(resources)
    program = ("import json, sys; from tests.test_fhir_speedups import corpus, outcomes; "
               "json.dump(outcomes(corpus()), sys.stdout)")
    child = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, check=True,
                           env={**os.environ, "RENKEI_FHIR_SPEEDUPS": "0"})
    assert json.loads(child.stdout) == json.loads(json.dumps(fast))
    # The corpus exercises every check's refusal, and acceptance.
    text = json.dumps(fast)
    assert fast.count("ok") >= 20
    for refusal in ("None is not allowed", "but got multiple", "Expect any of field value", "is required"):
        assert refusal in text, refusal


def test_disabled_leaves_the_library_alone() -> None:
    program = "from services.share import fhir_speedups; print(fhir_speedups.installed())"
    child = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, check=True, text=True,
                           env={**os.environ, "RENKEI_FHIR_SPEEDUPS": "0"})
    assert child.stdout.strip() == "False"
