"""Which resource types the store serves, which patient each belongs to, and the bindings we enforce.

``fhir.resources`` checks structure and types but not required value-set bindings, so the codes of the
elements that drive behaviour (statuses, gender, priorities, Bundle.type) are checked here.
"""

from __future__ import annotations

from typing import Any

SUPPORTED = (
    "Patient",
    "RelatedPerson",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "CareTeam",
    "Consent",
    "Questionnaire",
    "QuestionnaireResponse",
    "Composition",
    "Bundle",
    "Communication",
    "Task",
    "Binary",
    "DocumentReference",
    "Observation",
    "AuditEvent",
    "Subscription",
)
# AuditEvents are written by the server itself (the [access] issue), never through the API.
READ_ONLY = frozenset({"AuditEvent"})
# Types only network administrators read (the audit trail: who looked at whom).
ADMINISTRATORS_ONLY = frozenset({"AuditEvent"})

# The element that puts a resource in a patient's compartment (and so under that patient's data key).
COMPARTMENT_ELEMENT = {
    "RelatedPerson": "patient",
    "CareTeam": "subject",
    "Consent": "patient",
    "QuestionnaireResponse": "subject",
    "Composition": "subject",
    "Communication": "subject",
    "Task": "for",
    "DocumentReference": "subject",
    "Observation": "subject",
    "Binary": "securityContext",
}

_GENDER = {"male", "female", "other", "unknown"}
_PRIORITY = {"routine", "urgent", "asap", "stat"}
REQUIRED_BINDINGS: dict[str, dict[str, set[str]]] = {
    "Patient": {"gender": _GENDER},
    "RelatedPerson": {"gender": _GENDER},
    "Practitioner": {"gender": _GENDER},
    "CareTeam": {"status": {"proposed", "active", "suspended", "inactive", "entered-in-error"}},
    "Consent": {"status": {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}},
    "Questionnaire": {"status": {"draft", "active", "retired", "unknown"}},
    "QuestionnaireResponse": {"status": {"in-progress", "completed", "amended", "entered-in-error", "stopped"}},
    "Composition": {"status": {"preliminary", "final", "amended", "entered-in-error"}},
    "Communication": {
        "status": {
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        },
        "priority": _PRIORITY,
    },
    "Task": {
        "status": {
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        },
        "intent": {
            "unknown",
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        },
        "priority": _PRIORITY,
    },
    "Observation": {
        "status": {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    },
    "DocumentReference": {"status": {"current", "superseded", "entered-in-error"}},
    "Subscription": {"status": {"requested", "active", "error", "off"}},
    "Bundle": {
        "type": {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        }
    },
}


def binding_errors(resource_type: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(element path, message) for each bound element whose code is not in its value set."""
    problems = []
    for element, allowed in REQUIRED_BINDINGS.get(resource_type, {}).items():
        value = body.get(element)
        if value is not None and value not in allowed:
            problems.append(
                (
                    f"{resource_type}.{element}",
                    f"{value!r} is not a valid code; expected one of {', '.join(sorted(allowed))}",
                )
            )
    return problems


def reference_target(value: Any) -> tuple[str, str] | None:
    """("Patient", "123") from a Reference ``{"reference": "Patient/123"}`` (relative or absolute URL)."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    parts = value["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not parts[-1] or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


def compartment_patient(resource_type: str, resource_id: str, body: dict[str, Any]) -> str | None:
    """The id of the patient this resource belongs to, or None for resources outside any compartment."""
    if resource_type == "Patient":
        return resource_id
    if resource_type == "Bundle":
        entries = body.get("entry") or []
        first = entries[0].get("resource", {}) if entries and isinstance(entries[0], dict) else {}
        if first.get("resourceType") == "Composition":
            target = reference_target(first.get("subject"))
            return target[1] if target and target[0] == "Patient" else None
        return None
    element = COMPARTMENT_ELEMENT.get(resource_type)
    if element is None:
        return None
    target = reference_target(body.get(element))
    return target[1] if target and target[0] == "Patient" else None
