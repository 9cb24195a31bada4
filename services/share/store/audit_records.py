"""AuditEvents the store writes about itself (erasures, integrity failures).

They go to the audit log (services/share/audit/), sealed under the network's key, outside any patient's
compartment, so they outlast what they describe.
"""

from __future__ import annotations

from typing import Any

from services.kit.db import utcnow

# DICOM "Patient Record" event, as IHE BALP uses for patient-data operations.
_PATIENT_RECORD = {
    "system": "http://dicom.nema.org/resources/ontology/DCM",
    "code": "110110",
    "display": "Patient Record",
}


def store_audit_event(
    subtype: str, display: str, entity: str, actor: str, *, action: str, outcome: str
) -> dict[str, Any]:
    """An AuditEvent body; ``outcome`` is "0" (success), "4", "8" or "12" (failures), as FHIR defines."""
    return {
        "resourceType": "AuditEvent",
        "type": _PATIENT_RECORD,
        "subtype": [{"system": "urn:renkei:audit", "code": subtype, "display": display}],
        "action": action,
        "recorded": utcnow().isoformat(timespec="seconds"),
        "outcome": outcome,
        "agent": [{"requestor": True, "who": {"display": actor}}],
        "source": {"observer": {"display": "Renkei share service"}},
        "entity": [{"what": {"reference": entity}}],
    }
