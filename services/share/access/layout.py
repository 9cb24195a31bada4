"""Where a sheet's labelled sections lie in its stored JSON, so that withholding them costs a few byte slices
instead of parsing and re-serialising the whole sheet on every read (measured: 86 µs per 5 KB sheet, most of a
50-sheet search's cost; bench/access.py).

Written with each QuestionnaireResponse version (store.py ``_rows``): its sheet kind, the byte span of its
``meta`` object and, for each top-level item carrying a sensitivity label, the label, the linkId and the item's
byte span. orjson serialises deterministically, so each item's own serialisation appears verbatim in the whole.
The layout holds codes and offsets only — never an answer.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from services.kit.codes import REDACTED, SECTION_LABEL_EXTENSION, SENSITIVITY_LABEL, WITHHELD_EXTENSION

# A sheet's statuses before it is shared (services/share/sheets/lifecycle.py).
DRAFTS = frozenset({"in-progress", "stopped"})
DRAFT_MARK = b',"d":1}'
WITHHELD_TEXT = "（閲覧権限のない項目のため非表示 / withheld: not visible to your role）"


def sheet_kind(body: dict[str, Any] | None) -> str | None:
    """A QuestionnaireResponse's sheet kind: its template's name, from the ``questionnaire`` canonical
    (``…/Questionnaire/DischargeSheet|1.0``, ``urn:…:DischargeSheet``)."""
    canonical = (body or {}).get("questionnaire")
    if not isinstance(canonical, str) or not canonical:
        return None
    bare = canonical.split("|", 1)[0].rstrip("/")
    return bare.rsplit("/", 1)[-1].rsplit(":", 1)[-1] or None


def section_label(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    for extension in item.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == SECTION_LABEL_EXTENSION:
            coding = extension.get("valueCoding") or {}
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def layout_of(body: dict[str, Any], plaintext: bytes) -> bytes | None:
    """The layout of a QuestionnaireResponse's stored JSON (None for anything else)."""
    if body.get("resourceType") != "QuestionnaireResponse":
        return None
    spans: list[list[Any]] = []
    position = 0
    items = body.get("item")
    for item in items if isinstance(items, list) else []:
        piece = orjson.dumps(item)
        start = plaintext.find(piece, position)
        if start < 0:
            return None  # not where orjson would put it: readers fall back to parsing
        position = start + len(piece)
        label = section_label(item)
        if label is not None:
            spans.append([label, item.get("linkId"), start, position])
    meta = orjson.dumps(body.get("meta"))
    start = plaintext.find(b'"meta":' + meta)
    if start < 0 or not isinstance(body.get("meta"), dict):
        return None
    start += len(b'"meta":')
    marking = _redaction_point(body["meta"], plaintext, start, start + len(meta))
    if marking is None:
        return None
    found = {"q": sheet_kind(body), "m": [start, start + len(meta)], "r": marking, "s": spans}
    layout = orjson.dumps(found)
    # A draft: its author's organisation alone reads it (gate.py), which checks the mark at the layout's end.
    return layout[:-1] + DRAFT_MARK if body.get("status") in DRAFTS else layout


_REDACTED = orjson.dumps(REDACTED)
# How the REDACTED coding goes into meta: a new security list, after other codings, or into an empty list.
_MARKINGS = (b',"security":[' + _REDACTED + b"]", b"," + _REDACTED, _REDACTED)


def _redaction_point(meta: dict[str, Any], plaintext: bytes, start: int, end: int) -> list[int] | None:
    """Where (and which of _MARKINGS) marks the stored JSON's meta REDACTED, without parsing it on each read."""
    security = meta.get("security")
    if security is None:
        return [end - 1, 0]  # before meta's closing brace
    listed = b'"security":' + orjson.dumps(security)
    at = plaintext.find(listed, start, end)
    if at < 0 or not isinstance(security, list):
        return None
    return [at + len(listed) - 1, 1 if security else 2]  # before the list's closing bracket


class Layout:
    """A stored layout, read back."""

    def __init__(self, raw: bytes) -> None:
        data = orjson.loads(raw)
        self.kind: str | None = data["q"]
        self.meta: tuple[int, int] = (data["m"][0], data["m"][1])
        self.marking: tuple[int, bytes] = (data["r"][0], _MARKINGS[data["r"][1]])
        self.sections: list[tuple[str, Any, int, int]] = [(s[0], s[1], s[2], s[3]) for s in data["s"]]
        self.draft: bool = bool(data.get("d"))
        self._plans: dict[frozenset[str], tuple[list[tuple[int, int, bytes]], int]] = {}

    def labels_of_resource(self, body: bytes) -> list[str]:
        meta = orjson.loads(body[self.meta[0]:self.meta[1]]) or {}
        return [str(c.get("code")) for c in meta.get("security") or []
                if isinstance(c, dict) and c.get("system") == SENSITIVITY_LABEL]

    def withhold(self, body: bytes, visible: frozenset[str]) -> tuple[bytes, int]:
        """The body with the sections whose label is not ``visible`` replaced by a marker, and ``meta.security``
        marked REDACTED; and how many sections were withheld."""
        cuts, hidden = self._plan(visible)
        if not hidden:
            return body, 0
        pieces, position = [], 0
        for start, end, replacement in cuts:
            pieces += [body[position:start], replacement]
            position = end
        pieces.append(body[position:])
        return b"".join(pieces), hidden

    def _plan(self, visible: frozenset[str]) -> tuple[list[tuple[int, int, bytes]], int]:
        """The cuts for one set of visible labels, worked out once per layout and label set."""
        plan = self._plans.get(visible)
        if plan is None:
            hidden = [s for s in self.sections if s[0] not in visible]
            at, marking = self.marking
            cuts = [(at, at, marking), *((start, end, marker(label, link)) for label, link, start, end in hidden)]
            plan = self._plans[visible] = (sorted(cuts, key=lambda cut: cut[0]), len(hidden))
        return plan


@functools.lru_cache(maxsize=8192)
def parsed_layout(raw: bytes) -> Layout:
    """Layouts, read back once: a timeline's sheets are read again and again."""
    return Layout(raw)


@functools.lru_cache(maxsize=4096)
def marker(label: str, link_id: Any) -> bytes:
    return orjson.dumps({"linkId": link_id, "text": WITHHELD_TEXT,
                         "extension": [{"url": WITHHELD_EXTENSION, "valueCode": label}]})
