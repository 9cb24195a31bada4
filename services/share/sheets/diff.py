"""What changed between two versions of a sheet, item by item (``$diff``).

Items are matched by their linkId path; a repeating group's repetitions by their position (the second
participant is compared with the second participant). Each answer is shown as a reader would read it: a coding by
its display, anything else by its value. Withheld sections are markers in both versions and so never differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    path: str  # linkIds from the section down, "/"-joined; a repetition's position in brackets from the second on
    link_id: str
    kind: str  # added | removed | changed
    before: str | None
    after: str | None


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    old, new = dict(_answers(before.get("item"), ())), dict(_answers(after.get("item"), ()))
    found = []
    for path in sorted(old.keys() | new.keys()):
        was, now = old.get(path), new.get(path)
        if was == now:
            continue
        kind = "added" if was is None else "removed" if now is None else "changed"
        found.append(Change("/".join(path), path[-1].split("[")[0], kind, was, now))
    return found


def parameters(found: list[Change], versions: tuple[int, int]) -> dict[str, Any]:
    """The changes as a FHIR Parameters resource."""
    def part(change: Change) -> dict[str, Any]:
        parts = [{"name": "linkId", "valueString": change.link_id}, {"name": "path", "valueString": change.path},
                 {"name": "type", "valueCode": change.kind}]
        parts += [{"name": name, "valueString": value} for name, value in (("before", change.before),
                                                                            ("after", change.after)) if value]
        return {"name": "change", "part": parts}

    return {"resourceType": "Parameters", "parameter": [
        {"name": "from", "valueInteger": versions[0]}, {"name": "to", "valueInteger": versions[1]},
        *(part(change) for change in found)]}


def _answers(items: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, the answers as text) of every answered item."""
    seen: dict[str, int] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        link_id = str(item.get("linkId"))
        seen[link_id] = seen.get(link_id, 0) + 1
        here = (*path, link_id if seen[link_id] == 1 else f"{link_id}[{seen[link_id]}]")
        answers = [a for a in item.get("answer") or [] if isinstance(a, dict)]
        if answers:
            yield here, "; ".join(_shown(answer) for answer in answers)
        yield from _answers(item.get("item"), here)
        for answer in answers:
            yield from _answers(answer.get("item"), here)


def _shown(answer: dict[str, Any]) -> str:
    for key, value in answer.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, dict):
            return str(value.get("display") or value.get("code") or value.get("reference") or value.get("value")
                       or value.get("title") or value)
        return str(value).lower() if isinstance(value, bool) else str(value)
    return ""
