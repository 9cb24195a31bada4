"""Reading answers out of a sheet by linkId — for the scene rules, which need a date or a section, never the
whole sheet as a model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def items(body: Any) -> Iterator[dict[str, Any]]:
    """Every item of a sheet, at any depth (under groups and under answers)."""
    for item in body.get("item") or [] if isinstance(body, dict) else []:
        if not isinstance(item, dict):
            continue
        yield item
        yield from items(item)
        for answer in item.get("answer") or []:
            yield from items(answer)


def values(body: Any, link_id: str) -> list[Any]:
    """The answer values (valueX) of every item with this linkId."""
    found = []
    for item in items(body):
        if item.get("linkId") != link_id:
            continue
        for answer in item.get("answer") or []:
            if isinstance(answer, dict):
                found += [value for key, value in answer.items() if key.startswith("value")]
    return found


def first(body: Any, link_id: str) -> Any:
    found = values(body, link_id)
    return found[0] if found else None


def section(body: Any, link_id: str) -> Any:
    """A top-level section as sent (None if absent): to tell whether it changed between two versions."""
    for item in body.get("item") or [] if isinstance(body, dict) else []:
        if isinstance(item, dict) and item.get("linkId") == link_id:
            return item
    return None


def has_answers(item: Any) -> bool:
    return isinstance(item, dict) and any(values({"item": [item]}, str(child.get("linkId")))
                                          for child in items({"item": [item]}))
