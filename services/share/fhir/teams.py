"""Care-team joining by invitation, over the FHIR API (services/share/access/invitations.py holds the rules).

- ``GET  /fhir/CareTeam/{id}/$invitations``: each participant's invitation and the step it waits for
  (the team's managers, and the network's administrators);
- ``GET  /fhir/$invitations``: what waits for the caller — as the invited user, or as their organisation's
  administrator;
- ``POST /fhir/CareTeam/{id}/$accept``: the invitee accepts (``member`` names an invited organisation, when its
  administrator accepts for it);
- ``POST /fhir/CareTeam/{id}/$approve`` with ``member`` and ``approval`` (``organization`` or ``patient``,
  and an optional ``note``): the invitee's organisation administrator approves, or a manager records the
  patient's approval.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Forbidden, NotFound
from services.kit.tokens import Principal
from services.share.access import invitations
from services.share.access.decision import Action
from services.share.context import ShareContext
from services.share.fhir.auditing import Interaction
from services.share.fhir.negotiation import bounded_body, operation_parameters
from services.share.fhir.resources import checked_id, in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store.models import ResourceHead

router = APIRouter(prefix="/fhir", tags=["fhir"])


@router.get("/CareTeam/{team_id}/$invitations", summary="The team's invitations and the step each waits for")
async def team_invitations(team_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(team_id)

    def work(db: Session) -> dict[str, Any]:
        _managed_team(ctx, db, principal, team_id)
        return invitations.answer(invitations.for_team(db, principal.network, team_id))

    audit = (principal, Interaction("R", "invitations", f"CareTeam/{team_id}"))
    return FhirResponse(await in_transaction(ctx, work, audit))


@router.get("/$invitations", summary="Invitations waiting for the caller (as invitee or organisation admin)")
async def my_invitations(ctx: Context, principal: CurrentPrincipal) -> Response:
    found = await in_transaction(ctx, lambda db: invitations.answer(invitations.for_principal(db, principal)))
    return FhirResponse(found)


@router.post("/CareTeam/{team_id}/$accept", summary="The invited user (or organisation) accepts")
async def accept(team_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(team_id)
    values = operation_parameters(await bounded_body(request, 64 * 1024))
    member = values.get("member") or f"Practitioner/{principal.subject}"

    def work(db: Session) -> dict[str, Any]:
        invitation = invitations.find(db, principal.network, team_id, _reference(member))
        invitations.give(db, principal, invitation, "invitee", manager=False)
        return invitations.answer([invitation])

    audit = (principal, Interaction("U", "accept", f"CareTeam/{team_id}"))
    return FhirResponse(await in_transaction(ctx, work, audit))


@router.post("/CareTeam/{team_id}/$approve", summary="An organisation's or the patient's approval of a newcomer")
async def approve(team_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(team_id)
    values = operation_parameters(await bounded_body(request, 64 * 1024))
    approval, note = values.get("approval"), values.get("note")
    if approval not in ("organization", "patient"):
        raise BadRequest("'approval' is organization or patient", code="invalid_parameters",
                         expression=["Parameters.parameter.where(name='approval')"])
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise BadRequest("'note' is a text of at most 1,000 characters", code="invalid_parameters")

    def work(db: Session) -> dict[str, Any]:
        invitation = invitations.find(db, principal.network, team_id, _reference(values.get("member")))
        manager = approval == "patient" and _manages(ctx, db, principal, invitation.patient_id)
        invitations.give(db, principal, invitation, str(approval), manager=manager, note=note)
        return invitations.answer([invitation])

    audit = (principal, Interaction("U", "approve", f"CareTeam/{team_id}"))
    return FhirResponse(await in_transaction(ctx, work, audit))


def _reference(member: Any) -> str:
    if not isinstance(member, str) or "/" not in member:
        raise BadRequest("'member' is a reference such as Practitioner/<id> or Organization/<id>",
                         code="invalid_parameters", expression=["Parameters.parameter.where(name='member')"])
    return member


def _managed_team(ctx: ShareContext, db: Session, principal: Principal, team_id: str) -> None:
    """The team exists in the caller's network and the caller manages it (else 404 / 403)."""
    head = db.get(ResourceHead, ("CareTeam", team_id))
    if head is None or head.network_id != principal.network or head.deleted:
        raise NotFound(f"CareTeam/{team_id} is not known")
    if not _manages(ctx, db, principal, head.patient_id):
        decision = ctx.gate.decision(db, principal, "CareTeam", Action.READ, head.patient_id)
        if decision.hidden:
            raise NotFound(f"CareTeam/{team_id} is not known")
        raise Forbidden("only the team's managers see its invitations")


def _manages(ctx: ShareContext, db: Session, principal: Principal, patient_id: str) -> bool:
    facts = ctx.gate.facts(db, principal, [patient_id])[patient_id]
    return ctx.gate.manages(principal, facts)
