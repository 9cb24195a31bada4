"""A sheet's section labels come from its template, not from whoever fills it in.

Redaction (services/share/access/layout.py) withholds a section by the sensitivity label it carries. A client that
left a label out, or chose a milder one, would otherwise decide what other professions see. So before a
QuestionnaireResponse is decided on and stored, each top-level section whose linkId its template (the
``questionnaire`` canonical, ``url|version``; the newest version when none is given) defines gets exactly the
template's label. Sections the template does not define are left as they are here; checking a sheet against its
template (the [sheets] issue's validation) refuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from services.kit.codes import SECTION_LABEL_EXTENSION, SENSITIVITY_LABEL
from services.share.access.layout import section_label


class SectionLabels:
    def __init__(self, by_canonical: dict[str, dict[str, str]]) -> None:
        """``by_canonical``: ``url|version`` (and ``url`` for the newest version) → {top-level linkId: label}."""
        self._by_canonical = by_canonical

    @classmethod
    def load(cls, directory: Path) -> SectionLabels:
        """The labels of every template in ``directory`` (``renkei templates check`` vouches for them)."""
        found: dict[str, dict[str, str]] = {}
        newest: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {}
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            template = orjson.loads(path.read_bytes())
            labels = {item["linkId"]: label for item in template.get("item") or []
                      if (label := section_label(item)) is not None}
            url, version = template["url"], str(template.get("version", ""))
            found[f"{url}|{version}"] = labels
            order = _version_order(version)
            if url not in newest or order > newest[url][0]:
                newest[url] = (order, labels)
        found.update({url: labels for url, (_, labels) in newest.items()})
        return cls(found)

    def stamp(self, body: dict[str, Any]) -> None:
        """Give each top-level section the template defines the template's label, in place."""
        canonical = body.get("questionnaire")
        labels = self._by_canonical.get(canonical) if isinstance(canonical, str) else None
        items = body.get("item")
        if not labels or not isinstance(items, list):
            return
        for item in items:
            if isinstance(item, dict) and item.get("linkId") in labels:
                kept = [e for e in item.get("extension") or []
                        if not (isinstance(e, dict) and e.get("url") == SECTION_LABEL_EXTENSION)]
                label = {"url": SECTION_LABEL_EXTENSION,
                         "valueCoding": {"system": SENSITIVITY_LABEL, "code": labels[item["linkId"]]}}
                item["extension"] = [*kept, label]


def _version_order(version: str) -> tuple[int, ...]:
    """1.10.0 after 1.9.0; a version that is not dotted numbers sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()
