"""Code systems from ``schemas/codesystems`` — data, not code: a new profession needs no release."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

PROFESSION = "urn:renkei:codesystem:profession"
ORGANIZATION_TYPE = "urn:renkei:codesystem:organization-type"
CARE_TEAM_ROLE = "urn:renkei:codesystem:care-team-role"
SENSITIVITY_LABEL = "urn:renkei:codesystem:sensitivity-label"
SHEET_KIND = "urn:renkei:codesystem:sheet-kind"


@dataclass(frozen=True)
class Concept:
    code: str
    display_ja: str
    display_en: str
    properties: dict[str, object]


@dataclass(frozen=True)
class CodeSystemData:
    url: str
    concepts: dict[str, Concept]

    def __contains__(self, code: object) -> bool:
        return code in self.concepts

    def require(self, code: str, what: str) -> Concept:
        try:
            return self.concepts[code]
        except KeyError:
            raise ValueError(f"unknown {what} code {code!r} (system {self.url})") from None


@cache
def load_code_systems(schemas_dir: Path) -> dict[str, CodeSystemData]:
    systems: dict[str, CodeSystemData] = {}
    for path in sorted((schemas_dir / "codesystems").glob("*.json")):
        raw = orjson.loads(path.read_bytes())
        concepts = {}
        for item in raw.get("concept", []):
            english = next((d["value"] for d in item.get("designation", []) if d.get("language") == "en"), "")
            props = {
                p["code"]: next(v for k, v in p.items() if k.startswith("value")) for p in item.get("property", [])
            }
            concepts[item["code"]] = Concept(item["code"], item["display"], english, props)
        systems[raw["url"]] = CodeSystemData(raw["url"], concepts)
    return systems


def code_system(schemas_dir: Path, url: str) -> CodeSystemData:
    return load_code_systems(schemas_dir)[url]

# An AuditEvent agent's organisation (valueReference Organization/<id>).
ORGANIZATION_EXTENSION = "urn:renkei:extension:organization"
# A sheet section's sensitivity label (valueCoding from SENSITIVITY_LABEL), on Questionnaire and
# QuestionnaireResponse items; readers whose profession may not see the label get the section withheld.
SECTION_LABEL_EXTENSION = "urn:renkei:extension:sensitivity-label"
# Marks a section removed from an answer because the reader may not see its label (valueCode: the label).
WITHHELD_EXTENSION = "urn:renkei:extension:withheld"
# meta.security of a resource with something withheld (HL7 v3 ObservationValue REDACTED).
REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED",
            "display": "redacted"}
