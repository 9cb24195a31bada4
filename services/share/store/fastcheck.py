"""A quick check that a resource is valid as fhir.resources would judge it, tried before the library's own.

Validating a resource with fhir.resources builds a pydantic model for every element: about 0.8 ms of the 3.3 ms
a shared discharge sheet costs the server (bench/sheets.py), and every write pays it. Yet most bodies are plainly
valid: known keys, JSON values of the expected kinds, required elements present, one type per choice element.
This module walks the JSON once against facts read from the same model classes (each class's fields, which are
lists, which are required, which form a choice) and answers "surely valid" only when every element passes checks
that imply the library's; anything it is not sure of — an unknown key, a null, an empty list, a primitive's
``_extension``, a contained resource, a value of an unexpected JSON kind — answers False, and the caller then runs
the library, whose acceptance and refusals (with their wording) stay the authority.

Primitive values are checked with the library's own validators (a pydantic TypeAdapter of the field's annotated
type), except the two kinds whose rule is plain: a boolean is a JSON true or false, and a string is any text that
is not empty or only whitespace (fhir_core's String pattern ``[ \\r\\n\\t\\S]+`` finds a non-space character in it).
tests/test_fastcheck.py holds it to that: on thousands of mutated resources, whatever it calls valid the library
accepts, and the valid examples are all recognised (or the quick path would never be taken).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase, String
from pydantic import TypeAdapter, ValidationError

from services.share import fhir_speedups

Check = Callable[[Any], bool]
ENABLED = fhir_speedups.wanted()


@dataclass(frozen=True)
class _Shape:
    """What one model class allows: each key (by its JSON name) with whether it repeats and how one value is
    checked; the keys that must be present; the choice elements (keys, whether one of them is required)."""

    fields: dict[str, tuple[bool, Check]]
    required: tuple[str, ...]
    choices: tuple[tuple[tuple[str, ...], bool], ...]


def surely_valid(resource_type: str, data: dict[str, Any]) -> bool:
    """True: fhir.resources accepts ``data`` as a ``resource_type``. False: ask the library (it may, or may not)."""
    if not ENABLED or data.get("resourceType") != resource_type:
        return False
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):  # no such resource type: the library says so
        return False
    body = dict(data)
    del body["resourceType"]
    return _valid(_shape(model), body)


def _valid(shape: _Shape, data: dict[str, Any]) -> bool:
    fields = shape.fields
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None:
            return False  # unknown (or a primitive's _extension, or fhir_comments), or a null: the library decides
        many, check = field
        if many:
            if type(value) is not list or not value:
                return False
            for each in value:
                if not check(each):
                    return False
        elif not check(value):
            return False
    for key in shape.required:
        if key not in data:
            return False
    for keys, required in shape.choices:
        present = sum(1 for key in keys if key in data)
        if present > 1 or (required and present == 0):
            return False
    return True


@cache
def _shape(model: type[FHIRAbstractModel]) -> _Shape:
    fields: dict[str, tuple[bool, Check]] = {}
    names = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        names[name] = alias
        if name == "fhir_comments" or name.endswith("__ext"):
            continue  # never given a quick answer: present, they send the body to the library
        found = _field(info.annotation)
        if found is not None:
            fields[alias] = found
    blank = model.model_construct()
    required = {names[name] for name, info in model.model_fields.items() if info.is_required()}
    required |= {names[name] for name, _ in blank.get_required_fields()}
    choices = tuple((tuple(names[name] for name in group),
                     _required_choice(model.model_fields[group[0]].json_schema_extra))
                    for group in blank.get_one_of_many_fields().values())
    return _Shape(fields, tuple(sorted(required)), choices)


def _required_choice(extra: Any) -> bool:
    return isinstance(extra, dict) and extra.get("one_of_many_required") is True


def _field(annotation: Any) -> tuple[bool, Check] | None:
    """(repeats, check of one value) for a field's annotation; None for a shape not understood here."""
    inner = _without_none(annotation)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        check = _check(_without_none(item))  # a primitive list's nulls line values up with _extensions: ours go on
        return None if check is None else (True, check)
    check = _check(inner)
    return None if check is None else (False, check)


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def _check(annotation: Any) -> Check | None:
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        if issubclass(annotation, FhirElementOrResourceBase):
            return None  # any resource or element (a contained resource, a Bundle entry): the library's
        model = annotation.get_model_klass()
        return lambda value: type(value) is dict and _valid(_shape(model), value)
    if annotation is bool:
        return lambda value: type(value) is bool
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        if base is str and len(metadata) == 1 and isinstance(metadata[0], String):
            return _is_text
        return _primitive(annotation)
    return None


def _is_text(value: Any) -> bool:
    return type(value) is str and value != "" and not value.isspace()


def _primitive(annotation: Any) -> Check:
    """The library's own check of one primitive value (its pattern, its range, a real calendar date)."""
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def check(value: Any) -> bool:
        if type(value) not in (str, int, float):  # JSON's kinds for primitives; a boolean is no number here
            return False
        try:
            adapter.validate_python(value)
        except (ValidationError, ValueError, TypeError):
            return False
        return True

    return check
