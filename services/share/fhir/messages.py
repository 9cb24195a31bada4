"""Read receipts for the team thread, over the FHIR API (the messages themselves are Communication resources):

- ``POST /fhir/Communication/{id}/$read``: the caller has read this message and every earlier one of the patient's
  thread (earlier: told to the team before it, in the event log's order). A position only moves forward.
- ``GET  /fhir/Communication/{id}/$read-status``: who of the patient's current team has read it, and when, and who
  has not — what the sender of an urgent message watches.

An urgent message that must be acknowledged (extension ``urn:renkei:extension:acknowledgement-required``) asks each
member in a Task, completed by ``POST /fhir/Task/{id}/$acknowledge`` (services/share/messages/acknowledgements.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from services.kit.errors import Conflict, Forbidden
from services.kit.tokens import Principal
from services.share.fhir.auditing import Interaction
from services.share.fhir.resources import caller_of, checked_id, in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.messages import receipts
from services.share.security.deps import Context, CurrentPrincipal

router = APIRouter(prefix="/fhir", tags=["fhir"])
MESSAGE = "Communication"


@router.post("/Communication/{message_id}/$read", summary="Mark a message, and the thread before it, as read")
async def read_message(message_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(message_id)
    reader = _reader(principal)
    await request.app.state.hub.number_now()  # a message posted a moment ago has its place in the log

    def work(db: Session) -> Response:
        message = orjson.loads(ctx.store.read(db, caller_of(principal), MESSAGE, message_id).body)
        seq = _position(db, message_id)
        position = receipts.mark_read(db, principal.network, _patient(message), reader, seq, datetime.now(UTC))
        return FhirResponse({"resourceType": "Parameters", "parameter": [
            {"name": "reader", "valueReference": {"reference": reader}},
            {"name": "position", "valueString": str(position)}]})

    return await in_transaction(ctx, work, (principal, Interaction("U", "read", f"{MESSAGE}/{message_id}")))


@router.get("/Communication/{message_id}/$read-status", summary="Who of the team has read a message, who has not")
async def read_status(message_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(message_id)
    await request.app.state.hub.number_now()

    def work(db: Session) -> Response:
        message = orjson.loads(ctx.store.read(db, caller_of(principal), MESSAGE, message_id).body)
        patient_id = _patient(message)
        seq = _position(db, message_id)
        now = datetime.now(UTC)
        team = ctx.gate.team_read(db, patient_id) or ()
        members = dict.fromkeys(f"Practitioner/{p.member}" for p in team if p.kind == "practitioner" and p.active(now))
        sender = (message.get("sender") or {}).get("reference")
        read = receipts.positions(db, principal.network, patient_id)
        parameters: list[dict[str, Any]] = []
        for member in members:
            position = read.get(member)
            if member == sender:
                parameters.append(_entry("read", member, message.get("sent")))
            elif position is not None and position.seq >= seq:
                parameters.append(_entry("read", member, position.read_at.isoformat(timespec="seconds")))
            else:
                parameters.append(_entry("unread", member, None))
        return FhirResponse({"resourceType": "Parameters", "parameter": parameters})

    return await in_transaction(ctx, work, (principal, Interaction("R", "read-status", f"{MESSAGE}/{message_id}")))


def _reader(principal: Principal) -> str:
    if principal.kind != "user":
        raise Forbidden("read receipts are a team member's own", code="not_a_member")
    return f"Practitioner/{principal.subject}"


def _patient(message: dict[str, Any]) -> str:
    reference = str((message.get("subject") or {}).get("reference") or "")
    return reference.removeprefix("Patient/")


def _position(db: Session, message_id: str) -> int:
    seq = receipts.message_seq(db, message_id)
    if seq is None:  # another instance's numbering pass holds the lock this very moment
        raise Conflict("the message is being delivered; try again in a moment", code="not_yet_numbered")
    return seq


def _entry(name: str, member: str, at: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "member", "valueReference": {"reference": member}}]
    if at:
        parts.append({"name": "at", "valueDateTime": at})
    return {"name": name, "part": parts}
