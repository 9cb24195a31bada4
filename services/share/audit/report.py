"""The patient-level access report: who looked at (or changed) a patient's data, and when — from the audit log.

``GET /fhir/Patient/{id}/$access-report`` (network administrators) answers a Bundle of the AuditEvents recorded
about the patient, newest first, ``_count`` at a time (default 100, at most 1,000); the ``next`` link's
``_cursor`` continues exactly where a page ended, however many records share a time.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Forbidden
from services.share.audit.buffer import caught_up
from services.share.audit.models import AuditEntry
from services.share.context import ShareContext
from services.share.fhir.resources import in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal

router = APIRouter(prefix="/fhir", tags=["fhir"])

DEFAULT_COUNT, MAX_COUNT = 100, 1000


@router.get("/Patient/{patient_id}/$access-report", summary="Who accessed this patient's data, and when")
async def access_report(patient_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    if not principal.is_admin:
        raise Forbidden("the access report is for network administrators only")
    count, cursor = _paging(request)
    await caught_up(ctx)
    rows = await in_transaction(ctx, lambda db: report(ctx, db, principal.network, patient_id, count, cursor))
    events = [event for _, event in rows]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": event, "search": {"mode": "match"}} for event in events]}
    if len(events) == count:
        query = urlencode({"_count": count, "_cursor": rows[-1][0]})
        bundle["link"] = [{"relation": "next",
                           "url": f"{ctx.settings.fhir_base}/Patient/{patient_id}/$access-report?{query}"}]
    return FhirResponse(bundle)


def report(ctx: ShareContext, db: Session, network_id: str, patient_id: str, count: int,
           cursor: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(seq, AuditEvent) pairs, newest first; ``cursor``: only those older than that seq."""
    query = select(AuditEntry).where(AuditEntry.network_id == network_id, AuditEntry.patient_id == patient_id)
    if cursor is not None:
        query = query.where(AuditEntry.seq < cursor)
    rows = db.scalars(query.order_by(AuditEntry.seq.desc()).limit(count))
    return [(row.seq, {**ctx.audit.event(db, row), "id": f"audit-{row.seq}"}) for row in rows]


def _paging(request: Request) -> tuple[int, int | None]:
    raw_count = request.query_params.get("_count", str(DEFAULT_COUNT))
    raw_cursor = request.query_params.get("_cursor")
    if not raw_count.isdigit() or int(raw_count) < 1:
        raise BadRequest("_count must be a positive integer", code="invalid_search")
    if raw_cursor is not None and not raw_cursor.isdigit():
        raise BadRequest("_cursor is the one a next link gives", code="invalid_search")
    return min(int(raw_count), MAX_COUNT), int(raw_cursor) if raw_cursor is not None else None
