"""SMART App Launch v2 scopes: ``context/ResourceType.cruds`` (v1 ``.read``/``.write``/``.*`` accepted).

Used by the identity service to grant the intersection of what a client asks for and what it is registered for,
and by the share service to check what a token allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SMART = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")
_V2_ORDER = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class SmartScope:
    context: str
    resource: str
    permissions: str  # a subset of "cruds", in that order

    def __str__(self) -> str:
        return f"{self.context}/{self.resource}.{self.permissions}"

    def covers(self, context: str, resource: str, permission: str) -> bool:
        return self.context == context and self.resource in ("*", resource) and permission in self.permissions


def _normalise_permissions(raw: str) -> str | None:
    if raw in _V1:
        return _V1[raw]
    if not raw or any(ch not in _V2_ORDER for ch in raw):
        return None
    # v2 requires the letters in order and unrepeated; a client that gets it wrong is refused, not guessed at.
    if list(raw) != sorted(set(raw), key=_V2_ORDER.index):
        return None
    return raw


def parse_smart(scope: str) -> SmartScope | None:
    match = _SMART.match(scope)
    if not match or match.group(4):  # fine-grained query suffixes are not granted
        return None
    permissions = _normalise_permissions(match.group(3))
    if permissions is None:
        return None
    return SmartScope(match.group(1), match.group(2), permissions)


def split(scope: str | None) -> list[str]:
    return [item for item in (scope or "").split() if item]


def intersect(requested: list[str], registered: list[str]) -> list[str]:
    """What may be granted: each requested scope narrowed to what some registered scope allows.

    ``system/Patient.rs`` against ``system/*.cruds`` grants ``system/Patient.rs``; ``system/*.cruds`` against
    ``system/Patient.rs`` grants ``system/Patient.rs``. Non-SMART scopes must match exactly.
    """
    granted: list[str] = []
    smart_registered = [s for s in (parse_smart(r) for r in registered) if s is not None]
    for item in requested:
        asked = parse_smart(item)
        if asked is None:
            if item in registered and item not in granted:
                granted.append(item)
            continue
        for allowed in smart_registered:
            if allowed.context != asked.context:
                continue
            if asked.resource == "*":
                resource = allowed.resource
            elif allowed.resource in ("*", asked.resource):
                resource = asked.resource
            else:
                continue
            permissions = "".join(ch for ch in _V2_ORDER if ch in asked.permissions and ch in allowed.permissions)
            if permissions:
                text = str(SmartScope(asked.context, resource, permissions))
                if text not in granted:
                    granted.append(text)
    return granted


def allows(scopes: list[str], context: str, resource: str, permission: str) -> bool:
    parsed = (parse_smart(s) for s in scopes)
    return any(s is not None and s.covers(context, resource, permission) for s in parsed)
