"""Reading a sheet's JSON by linkId — for the validator, the scene rules, documents and vitals, which each need a
date, a section or the answers of one question, never the whole sheet as a model. Anything malformed counts as
absent rather than raising: what these read was validated, or is being."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def dicts(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a list field."""
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def walk(item_list: Any) -> Iterator[dict[str, Any]]:
    """Every item of an item list, at any depth (under groups and under answers), parents first."""
    for item in dicts(item_list):
        yield item
        yield from below(item)


def below(node: Any) -> Iterator[dict[str, Any]]:
    """Every item under a sheet or an item: its items and its answers' items, at any depth."""
    if not isinstance(node, dict):
        return
    yield from walk(node.get("item"))
    for answer in dicts(node.get("answer")):
        yield from walk(answer.get("item"))


def values(node: Any, link_id: str) -> list[Any]:
    """The answer values (valueX) of every item with this linkId under ``node`` (a sheet or an item)."""
    found = []
    for item in below(node):
        if item.get("linkId") == link_id:
            for answer in dicts(item.get("answer")):
                found += [value for key, value in answer.items() if key.startswith("value")]
    return found


def first(node: Any, link_id: str) -> Any:
    found = values(node, link_id)
    return found[0] if found else None


def section(body: Any, link_id: str) -> Any:
    """A top-level section as sent (None if absent): to tell whether it changed between two versions."""
    return next((item for item in dicts(body.get("item") if isinstance(body, dict) else None)
                 if item.get("linkId") == link_id), None)


def has_answers(item: Any) -> bool:
    return any(item.get("answer") for item in below(item)) if isinstance(item, dict) else False
