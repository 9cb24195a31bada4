"""Joining a care team by invitation, as regional networks run it.

A team manager adds a participant to the CareTeam (a new version of it); where the network's
``team_join_approvals`` asks for approvals, the newcomer is listed but holds no access until each is in:

- ``invitee``: the invited user accepts (``POST CareTeam/{id}/$accept``; for an organisation, its administrator);
- ``organization``: the invitee's organisation's administrator approves (``$approve``, approval ``organization``);
- ``patient``: a team manager records the patient's approval (``$approve``, approval ``patient``).

``GET CareTeam/{id}/$invitations`` shows the inviter each step (waiting for invitee / organisation / patient);
``GET /fhir/$invitations`` shows a user what waits for them. Ending a participant's period in the CareTeam ends
their access at once (projection.py), whatever the invitation says.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Conflict, Forbidden, NotFound
from services.kit.tokens import Principal
from services.share.access.models import TeamInvitation, TeamParticipant

_STEP = {"invitee": "waiting-for-invitee", "organization": "waiting-for-organization",
         "patient": "waiting-for-patient"}
_REFERENCE_KIND = {"practitioner": "Practitioner", "organization": "Organization"}


def settle(db: Session, network_id: str, care_team_id: str, patient_id: str, rows: list[dict[str, Any]],
           approved_before: set[tuple[str, str]], approvals: tuple[str, ...], actor: str) -> set[tuple[str, str]]:
    """The team's participants still waiting for approvals; an invitation is opened for each newcomer."""
    existing = {(i.kind, i.member_id): i for i in db.scalars(
        select(TeamInvitation).where(TeamInvitation.care_team_id == care_team_id))}
    pending: set[tuple[str, str]] = set()
    now = datetime.now(UTC)
    for row in rows:
        key = (row["kind"], row["member_id"])
        if key in approved_before or row["kind"] not in _REFERENCE_KIND:
            continue
        invitation = existing.get(key)
        if invitation is None:
            if not approvals:
                continue  # the network lets a manager's addition take effect at once
            invitation = TeamInvitation(
                id=uuid.uuid4().hex, network_id=network_id, care_team_id=care_team_id, patient_id=patient_id,
                kind=row["kind"], member_id=row["member_id"], role=row["role"], invited_by=actor, invited_at=now,
                needs=list(approvals), given={})
            db.add(invitation)
            existing[key] = invitation
        if invitation.waiting_for:
            pending.add(key)
    return pending


def status(invitation: TeamInvitation) -> str:
    waiting = invitation.waiting_for
    return _STEP[waiting[0]] if waiting else "active"


def describe(invitation: TeamInvitation) -> dict[str, Any]:
    """One invitation as a Parameters part: who, which role, who invited, what it waits for, what was given."""
    parts: list[dict[str, Any]] = [
        {"name": "careTeam", "valueReference": {"reference": f"CareTeam/{invitation.care_team_id}"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/{invitation.patient_id}"}},
        {"name": "member", "valueReference": {"reference": _reference(invitation)}},
        {"name": "role", "valueCode": invitation.role or "unspecified"},
        {"name": "invitedBy", "valueString": invitation.invited_by},
        {"name": "invited", "valueDateTime": invitation.invited_at.isoformat(timespec="seconds")},
        {"name": "status", "valueCode": status(invitation)},
    ]
    parts += [{"name": "waitingFor", "valueCode": step} for step in invitation.waiting_for]
    for approval, given in sorted(invitation.given.items()):
        parts.append({"name": "approval", "part": [
            {"name": "kind", "valueCode": approval}, {"name": "by", "valueString": given["by"]},
            {"name": "at", "valueDateTime": given["at"]},
            *([{"name": "note", "valueString": given["note"]}] if given.get("note") else []),
        ]})
    return {"name": "invitation", "part": parts}


def give(db: Session, principal: Principal, invitation: TeamInvitation, approval: str, *, manager: bool,
         note: str | None = None) -> None:
    """Record one approval, if this caller may give it; the participant's access starts with the last one."""
    if approval not in invitation.needs:
        raise BadRequest(f"this network does not ask for a {approval!r} approval", code="approval_not_needed")
    if approval in invitation.given:
        raise Conflict(f"the {approval} approval was already given", code="already_approved")
    if approval == "invitee" and not _is_invitee(principal, invitation):
        raise Forbidden("only the invited user (or, for an organisation, its administrator) accepts")
    if approval == "organization":
        if "invitee" in invitation.needs and "invitee" not in invitation.given:
            raise Conflict("the invitee has not accepted yet", code="waiting_for_invitee")
        if not (principal.is_org_admin and principal.organization == _organization_of(invitation)):
            raise Forbidden("only the invitee's organisation administrator approves for the organisation")
    if approval == "patient" and not manager:
        raise Forbidden("a team manager records the patient's approval")
    given = dict(invitation.given)
    given[approval] = {"by": f"{principal.kind}:{principal.subject}", "organization": principal.organization,
                       "at": datetime.now(UTC).isoformat(timespec="seconds"), **({"note": note} if note else {})}
    invitation.given = given
    if not invitation.waiting_for:
        db.execute(update(TeamParticipant).where(
            TeamParticipant.care_team_id == invitation.care_team_id, TeamParticipant.kind == invitation.kind,
            TeamParticipant.member_id == invitation.member_id).values(approved=True))


def _is_invitee(principal: Principal, invitation: TeamInvitation) -> bool:
    if invitation.kind == "practitioner":
        return principal.kind == "user" and principal.subject == invitation.member_id
    return principal.organization == invitation.member_id and (principal.is_org_admin or principal.kind == "system")


def _organization_of(invitation: TeamInvitation) -> str:
    """The invitee's organisation: the member itself, or the one the invited user accepted from."""
    if invitation.kind == "organization":
        return invitation.member_id
    return str((invitation.given.get("invitee") or {}).get("organization") or "")


def _reference(invitation: TeamInvitation) -> str:
    return f"{_REFERENCE_KIND.get(invitation.kind, 'PractitionerRole')}/{invitation.member_id}"


def for_team(db: Session, network_id: str, care_team_id: str) -> list[TeamInvitation]:
    return list(db.scalars(select(TeamInvitation).where(
        TeamInvitation.network_id == network_id, TeamInvitation.care_team_id == care_team_id)
        .order_by(TeamInvitation.invited_at)))


def for_principal(db: Session, principal: Principal) -> list[TeamInvitation]:
    """Invitations waiting for this user: as the invitee, or as their organisation's administrator."""
    mine = [TeamInvitation.member_id == principal.subject]
    if principal.is_org_admin:
        mine.append(TeamInvitation.member_id == principal.organization)
    found = db.scalars(select(TeamInvitation).where(TeamInvitation.network_id == principal.network, or_(*mine)))
    rows = [i for i in found if i.waiting_for]
    if principal.is_org_admin:  # practitioners who accepted from this organisation, awaiting its approval
        rows += [i for i in db.scalars(select(TeamInvitation).where(
            TeamInvitation.network_id == principal.network, TeamInvitation.kind == "practitioner"))
            if i.waiting_for and i.waiting_for[0] == "organization" and _organization_of(i) == principal.organization
            and i not in rows]
    return rows


def find(db: Session, network_id: str, care_team_id: str, member: str) -> TeamInvitation:
    """The invitation of ``member`` (``Practitioner/<id>`` or ``Organization/<id>``) to a team."""
    kind_name, _, member_id = member.partition("/")
    kind = {v: k for k, v in _REFERENCE_KIND.items()}.get(kind_name)
    found = db.scalar(select(TeamInvitation).where(
        TeamInvitation.network_id == network_id, TeamInvitation.care_team_id == care_team_id,
        TeamInvitation.kind == (kind or ""), TeamInvitation.member_id == member_id)) if kind else None
    if found is None:
        raise NotFound(f"no invitation of {member} to CareTeam/{care_team_id}")
    return found


def answer(invitations: list[TeamInvitation]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [describe(i) for i in invitations]}
