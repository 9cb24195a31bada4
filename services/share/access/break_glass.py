"""Break-the-glass: an emergency user outside the patient's team states a reason and gets, for a limited time,
read access to what the permission matrix's break-glass rule names (the emergency sheet, the ACP record …).

``POST /fhir/Patient/{id}/$break-glass`` with a Parameters resource holding ``reason`` (valueString) answers a
Parameters resource with the grant's ``expires``. Only the professions the matrix names may ask; every use is an
audit record flagged as emergency access (purposeOfEvent ETREAT, subtype ``break-glass``), and a network
administrator lists them all with ``GET /fhir/$break-glass-uses``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit.codes import ORGANIZATION_EXTENSION
from services.kit.errors import BadRequest, Forbidden, NotFound
from services.kit.tokens import Principal
from services.share.access.models import BreakGlassGrant
from services.share.audit.models import AuditEntry
from services.share.audit.trail import Access
from services.share.context import ShareContext
from services.share.events.log import append_urgent
from services.share.fhir.negotiation import bounded_body, check_content_type
from services.share.fhir.resources import in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store.statements import statements

router = APIRouter(prefix="/fhir", tags=["fhir"])

MAX_REASON = 1000
_EMERGENCY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT",
              "display": "Emergency Treatment"}


@router.post("/Patient/{patient_id}/$break-glass", summary="Emergency access to a patient outside one's team")
async def break_glass(patient_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    check_content_type(request)
    reason = _reason(await bounded_body(request, 64 * 1024))
    found = await in_transaction(ctx, lambda db: grant(ctx, db, principal, patient_id, reason))
    return FhirResponse({"resourceType": "Parameters", "parameter": [
        {"name": "grant", "valueString": found.id},
        {"name": "expires", "valueInstant": found.expires_at.isoformat(timespec="seconds")},
        {"name": "scope", "valueString": ", ".join(sorted(ctx.matrix.break_glass.sheets))},
    ]})


@router.get("/$break-glass-uses", summary="Every break-the-glass use in the network (administrators)")
async def break_glass_uses(ctx: Context, principal: CurrentPrincipal) -> Response:
    if not principal.is_admin:
        raise Forbidden("only a network administrator may list break-the-glass uses")
    events = await in_transaction(ctx, lambda db: _uses(ctx, db, principal.network))
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(events),
                         "entry": [{"resource": event, "search": {"mode": "match"}} for event in events]})


def _reason(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("$break-glass takes a Parameters resource with a 'reason'", code="invalid_parameters")
    reasons = [p.get("valueString") for p in body.get("parameter") or [] if isinstance(p, dict)
               and p.get("name") == "reason"]
    if len(reasons) != 1 or not isinstance(reasons[0], str) or not reasons[0].strip():
        raise BadRequest("state the reason for emergency access: one 'reason' parameter (valueString)",
                         code="reason_required", expression=["Parameters.parameter.where(name='reason')"])
    if len(reasons[0]) > MAX_REASON:
        raise BadRequest(f"the reason is longer than {MAX_REASON} characters", code="reason_too_long")
    return reasons[0].strip()


def grant(ctx: ShareContext, db: Session, principal: Principal, patient_id: str, reason: str,
          now: datetime | None = None) -> BreakGlassGrant:
    rule = ctx.matrix.break_glass
    if principal.kind != "user" or principal.profession not in rule.professions:
        raise Forbidden(f"break-the-glass is for {', '.join(sorted(rule.professions))} only")
    state = statements(db).patient(db, patient_id)
    if state is None or state[0] != principal.network or state[1]:
        raise NotFound(f"Patient/{patient_id} is not known")
    now = now or datetime.now(UTC)
    expires = now + timedelta(hours=rule.hours)
    seq = ctx.audit.record(db, Access(principal.network, principal.subject, patient_id, "E", "0"),
                           _event(principal, patient_id, reason, now, expires), recorded=now)
    found = BreakGlassGrant(id=uuid.uuid4().hex, network_id=principal.network, patient_id=patient_id,
                            subject=principal.subject, organization=principal.organization,
                            profession=principal.profession or "", granted_at=now, expires_at=expires, audit_seq=seq)
    db.add(found)
    # The team is told at once (an urgent event: WebSocket, and Web Push to those whose app is closed).
    # About the Patient as its team sees it: its current version, written by whom it was written.
    current = statements(db).current(db, principal.network, "Patient", patient_id)
    assert current is not None  # checked above: the patient exists in this network
    append_urgent(db, principal.network, patient_id, "Patient", patient_id, current.version,
                  current.author_organization, kind="break-glass")
    return found


def _uses(ctx: ShareContext, db: Session, network_id: str) -> list[dict[str, Any]]:
    rows = db.scalars(select(AuditEntry).join(BreakGlassGrant, BreakGlassGrant.audit_seq == AuditEntry.seq)
                      .where(BreakGlassGrant.network_id == network_id)
                      .order_by(AuditEntry.recorded.desc()))
    return [{**ctx.audit.event(db, row), "id": f"audit-{row.seq}"} for row in rows]


def _event(principal: Principal, patient_id: str, reason: str, now: datetime, expires: datetime) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113",
                 "display": "Security Alert"},
        "subtype": [{"system": "urn:renkei:audit", "code": "break-glass",
                     "display": "緊急時アクセス (break-the-glass)"}],
        "action": "E",
        "recorded": now.isoformat(timespec="seconds"),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [_EMERGENCY], "text": reason}],
        "agent": [{"requestor": True, "who": {"reference": f"Practitioner/{principal.subject}"},
                   "role": [{"text": principal.profession or ""}],
                   "extension": [{"url": ORGANIZATION_EXTENSION,
                                  "valueReference": {"reference": f"Organization/{principal.organization}"}}]}],
        "source": {"observer": {"display": "Renkei share service"}},
        "entity": [{"what": {"reference": f"Patient/{patient_id}"},
                    "detail": [{"type": "expires", "valueString": expires.isoformat(timespec="seconds")}]}],
    }
