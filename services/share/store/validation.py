"""Turning a request body into a resource dict: JSON, then the fhir.resources model, then our bindings.

Validation runs once per write. Every refusal names what is wrong and, where there is one, the element path.
"""

from __future__ import annotations

from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from services.kit.errors import BadRequest
from services.share.store.types import binding_errors

MAX_BODY_BYTES = 20 * 1024 * 1024


def _path(resource_type: str, location: tuple[Any, ...]) -> str:
    path = resource_type
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
            path += f".{part}"
    return path


def load_object(raw: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying why not (``what`` names what was expected)."""
    if not raw.strip():
        raise BadRequest(f"the request body is empty; send {what} as JSON", code="empty_body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object ({what})", code="invalid_json")
    return data


def parse_resource(raw: bytes, resource_type: str) -> dict[str, Any]:
    data = load_object(raw, "a FHIR resource")
    found = data.get("resourceType")
    if found != resource_type:
        raise BadRequest(
            f"resourceType {found!r} does not match the URL's {resource_type}",
            code="wrong_type",
            expression=["resourceType"],
        )
    return validate(data)


MAX_DEPTH = 100


def check_depth(data: Any, resource_type: str) -> None:
    """Refuse absurd nesting before anything recursive (the model, the serialiser) meets it.

    Level by level, each level's containers gathered by one comprehension: three times faster than a node stack
    on a sheet, and this runs on every write. ``data`` is parsed JSON: plain dicts and lists.
    """
    level = [data]
    depth = 0
    while level:
        if depth > MAX_DEPTH:
            raise BadRequest(f"{resource_type} is nested more than {MAX_DEPTH} levels deep", code="too_deep")
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node if type(node) is list else ()
            below += [child for child in children if type(child) is dict or type(child) is list]
        level = below
        depth += 1


def validate(data: dict[str, Any]) -> dict[str, Any]:
    resource_type = str(data["resourceType"])
    check_depth(data, resource_type)
    try:
        get_fhir_model_class(resource_type).model_validate(data)
    except ValidationError as error:
        problems = [(_path(resource_type, tuple(e.get("loc", ()))), str(e.get("msg"))) for e in error.errors()]
        raise _invalid(problems) from None
    except (ValueError, TypeError, KeyError) as error:
        raise BadRequest(f"{resource_type} is not valid: {error}", code="invalid_resource") from None
    problems = binding_errors(resource_type, data)
    if problems:
        raise _invalid(problems)
    return data


def _invalid(problems: list[tuple[str, str]]) -> BadRequest:
    shown = problems[:20]
    message = "; ".join(f"{path}: {msg}" for path, msg in shown)
    return BadRequest(message, code="invalid_resource", expression=[path for path, _ in shown])
