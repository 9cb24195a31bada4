"""A newly registered patient's care team: whoever registers a patient is the first participant of their team,
so that the registrant (a user, or a hospital system's organisation) can go on to build it.

The registrant's role comes from the permission matrix (``team.registrant_roles``: a physician becomes the
primary physician, a care manager the care manager, others the coordinator). Added by the server, the
registrant needs no invitation; everyone after them joins as the network's ``team_join_approvals`` say.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.kit.codes import CARE_TEAM_ROLE
from services.kit.tokens import Principal
from services.share.access.matrix import Matrix


def first_team(matrix: Matrix, principal: Principal, patient_id: str) -> dict[str, Any]:
    """The CareTeam the store writes beside a new Patient (services/share/store/service.py)."""
    if principal.kind == "user":
        member = f"Practitioner/{principal.subject}"
        role = matrix.registrant_roles.get(principal.profession or "", "coordinator")
    else:
        member, role = f"Organization/{principal.organization}", "coordinator"
    return {
        "resourceType": "CareTeam", "status": "active", "name": "ケアチーム (care team)",
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [{"role": [{"coding": [{"system": CARE_TEAM_ROLE, "code": role}]}],
                         "member": {"reference": member},
                         "period": {"start": datetime.now(UTC).date().isoformat()}}],
    }
