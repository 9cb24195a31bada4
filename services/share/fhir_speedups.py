"""Faster equivalents of three per-element checks in fhir_core, the base of fhir.resources' models.

Validating a sheet builds one model per element (about 45 for a 4 KB QuestionnaireResponse), and for each one
fhir_core runs three checks in Python that re-derive, element after element, facts that never change for a
class: which fields are lists of complex types, which fields form a choice (``value[x]``), which primitive
fields are required. That was a third of a sheet's validation time. Here those facts are computed once per
class; each check then only asks whether the element is fine. Whenever it is not, the library's own check runs
and raises its own error, so what is accepted and every refusal's wording stay exactly fhir_core's.

The replacements are installed only over the code they were written against: the originals' source is
fingerprinted, and a library whose checks changed keeps its own (with a warning). Installation must happen
before the R4B model classes are built (pydantic binds a class's validators when it creates the class), so
this module is imported by ``services/share/__init__.py``. ``RENKEI_FHIR_SPEEDUPS=0`` leaves the library as it is:
the equivalence test compares both.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import structlog
from fhir_core import fhirabstractmodel
from fhir_core.utils import is_list_type, is_primitive_type

log = structlog.get_logger(__name__)

Model = fhirabstractmodel.FHIRAbstractModel
# sha256 (first 128 bits) of each original's source, in fhir-core 1.1.12.
_FINGERPRINTS = {
    "reject_null_complex_elements": "d0d0200524d20d337433d62ea06bc4f1",
    "_validate_one_of_many": "b2f9b73fb7cfd1c0dc431ea54223ec60",
    "_validate_required_primitive_elements": "3120cbe77ecbe66accc2ddf393eefd80",
}
_ORIGINAL: dict[str, Callable[..., Any]] = {}
# Per class: the facts the checks need (filled on first use; racing threads compute equal values).
_COMPLEX_LISTS: dict[type, tuple[tuple[str, str | None], ...]] = {}
_CHOICES: dict[type, tuple[tuple[tuple[str, ...], bool], ...] | None] = {}
_REQUIRED: dict[type, tuple[str, ...]] = {}


def _complex_lists(cls: type[Model]) -> tuple[tuple[str, str | None], ...]:
    found = _COMPLEX_LISTS.get(cls)
    if found is None:
        found = _COMPLEX_LISTS[cls] = tuple(
            (name, field.alias)
            for name, field in cls.model_fields.items()
            if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext")
        )
    return found


def reject_null_complex_elements(cls: type[Model], data: Any) -> Any:
    if isinstance(data, dict):
        for name, alias in _complex_lists(cls):
            value = data.get(alias if alias and alias in data else name)
            if isinstance(value, list) and any(item is None for item in value):
                return _ORIGINAL["reject_null_complex_elements"](cls, data)  # raises the library's error
    return data


def _choices(model: Model) -> tuple[tuple[tuple[str, ...], bool], ...] | None:
    """(field names, required) per choice element; None where the class's declarations are not as expected."""
    cls = type(model)
    if cls not in _CHOICES:
        _CHOICES[cls] = _declared_choices(model)
    return _CHOICES[cls]


def _declared_choices(model: Model) -> tuple[tuple[tuple[str, ...], bool], ...] | None:
    fields = type(model).model_fields
    choices = []
    for prefix, names in model.get_one_of_many_fields().items():
        extra = fields[names[0]].json_schema_extra
        if not isinstance(extra, dict) or extra.get("one_of_many") != prefix:
            return None  # the library's own check will say what is wrong
        choices.append((tuple(names), extra.get("one_of_many_required") is True))
    return tuple(choices)


def _validate_one_of_many(self: Model) -> None:
    choices = _choices(self)
    if choices is None:
        return _ORIGINAL["_validate_one_of_many"](self)  # type: ignore[no-any-return]
    for names, required in choices:
        present = 0
        for name in names:
            if getattr(self, name, None) is not None:
                present += 1
        if present > 1 or (required and present == 0):
            return _ORIGINAL["_validate_one_of_many"](self)  # type: ignore[no-any-return]
    return None


def _validate_required_primitive_elements(self: Model) -> None:
    cls = type(self)
    keys = _REQUIRED.get(cls)
    if keys is None:
        aliases = cls.get_alias_mapping()
        keys = _REQUIRED[cls] = tuple(aliases[name] for name, _extension in self.get_required_fields())
    for key in keys:
        if getattr(self, key, None) is None:  # absent: present only as an extension, or an error
            return _ORIGINAL["_validate_required_primitive_elements"](self)  # type: ignore[no-any-return]
    return None


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "reject_null_complex_elements": reject_null_complex_elements,
    "_validate_one_of_many": _validate_one_of_many,
    "_validate_required_primitive_elements": _validate_required_primitive_elements,
}


def fingerprint(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:32]


def install() -> bool:
    """Put the replacements in place (once); False if disabled or the library's checks are not the known ones."""
    if _ORIGINAL:
        return True
    if not wanted():
        return False
    originals = {name: _unwrap(Model.__dict__[name]) for name in _REPLACEMENTS}
    changed = [name for name, function in originals.items() if fingerprint(function) != _FINGERPRINTS[name]]
    if changed:
        log.warning("fhir_speedups_not_installed", reason="fhir_core's checks changed", checks=changed)
        return False
    _ORIGINAL.update(originals)
    for name, replacement in _REPLACEMENTS.items():
        wrapped = classmethod(replacement) if isinstance(Model.__dict__[name], classmethod) else replacement
        setattr(Model, name, wrapped)
    return True


def wanted() -> bool:
    """False with ``RENKEI_FHIR_SPEEDUPS=0``: validation is then the library's alone (for comparison), without these
    replacements and without the quick check of plainly valid bodies (services/share/store/fastcheck.py)."""
    return os.environ.get("RENKEI_FHIR_SPEEDUPS", "1") != "0"


def installed() -> bool:
    return bool(_ORIGINAL)


def _unwrap(attribute: Any) -> Callable[..., Any]:
    return attribute.__func__ if isinstance(attribute, classmethod) else attribute
