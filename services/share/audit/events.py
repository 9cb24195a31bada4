"""An interaction's AuditEvent as it is stored (compact) and as it is served (a FHIR AuditEvent).

Every read leaves a record, so what each record holds is written, sealed, hashed into the chain and sent to the
database hundreds of times a second: the stored form keeps only what varies between interactions (about a quarter
of the AuditEvent's JSON), and the row's own columns give the action, outcome and time. ``expand`` rebuilds the
full AuditEvent when the log is read. Records written whole (``"resourceType": "AuditEvent"``: break-the-glass,
the store's erasure and integrity events, and every record from before this form) are served as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.kit.codes import ORGANIZATION_EXTENSION

FORM = 2  # the compact form's version, under "v"
_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"


def compact(*, kind: str, who: str, organization: str, role: str | None, device: str | None, what: str,
            bases: dict[str, str], withheld_resources: int, withheld_sections: int, reason: str | None
            ) -> dict[str, Any]:
    """``kind`` a restful-interaction code or operation name; ``who`` ``Practitioner/…`` or ``Device/…``;
    ``what`` the target (``Type/id``, or ``Type`` for a search or create); ``bases`` patient id → the basis of
    access (or "refused")."""
    stored: dict[str, Any] = {"v": FORM, "k": kind, "who": who, "org": organization, "what": what, "p": bases}
    if role:
        stored["role"] = role
    if device:
        stored["dev"] = device
    if withheld_resources or withheld_sections:
        stored["w"] = [withheld_resources, withheld_sections]
    if reason:
        stored["d"] = reason
    return stored


def is_compact(stored: dict[str, Any]) -> bool:
    return stored.get("v") == FORM and "resourceType" not in stored


def expand(stored: dict[str, Any], *, action: str, outcome: str, recorded: datetime) -> dict[str, Any]:
    """The FHIR AuditEvent a compact record stands for."""
    agent: dict[str, Any] = {
        "requestor": True, "who": {"reference": stored["who"]},
        "extension": [{"url": ORGANIZATION_EXTENSION,
                       "valueReference": {"reference": f"Organization/{stored['org']}"}}],
    }
    if stored.get("role"):
        agent["role"] = [{"text": stored["role"]}]
    agents = [agent]
    if stored.get("dev"):
        agents.append({"requestor": False, "who": {"reference": f"Device/{stored['dev']}"},
                       "type": {"text": "device"}})
    what = stored["what"]
    entities: list[dict[str, Any]] = [{"what": {"reference": what}} if "/" in what else {"what": {"display": what}}]
    entities += [{"what": {"reference": f"Patient/{patient}"}, "detail": [{"type": "basis", "valueString": basis}]}
                 for patient, basis in sorted(stored["p"].items())]
    if "w" in stored:
        resources, sections = stored["w"]
        entities[0]["detail"] = [{"type": "withheld-resources", "valueString": str(resources)},
                                 {"type": "withheld-sections", "valueString": str(sections)}]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "type": _REST,
        "subtype": [{"system": _INTERACTION, "code": stored["k"]}],
        "action": action, "recorded": recorded.astimezone(UTC).isoformat(timespec="milliseconds"),
        "outcome": outcome, "agent": agents, "source": {"observer": {"display": "Renkei share service"}},
        "entity": entities,
    }
    if stored.get("d"):
        event["outcomeDesc"] = stored["d"]
    return event
