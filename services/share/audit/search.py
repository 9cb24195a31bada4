"""The audit trail as FHIR AuditEvents, for network administrators, served from the audit log itself.

``GET /fhir/AuditEvent?patient=…&agent=…&date=…&action=…`` answers a Bundle of matching AuditEvents, newest
first, ``_count`` at a time (default 100, at most 1,000) with a ``next`` link; ``date`` takes the FHIR prefixes
(``ge2026-12-01``, ``lt2026-12-02T09:00:00+09:00`` …) and may repeat. ``GET /fhir/AuditEvent/audit-<seq>`` reads
one. Every record is decrypted here and nowhere else; the rows themselves hold only opaque ids (models.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Forbidden, NotFound
from services.kit.tokens import Principal
from services.share.audit.buffer import caught_up
from services.share.audit.models import AuditEntry
from services.share.context import ShareContext
from services.share.fhir.resources import in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store.params import date_range

router = APIRouter(prefix="/fhir", tags=["fhir"])

DEFAULT_COUNT, MAX_COUNT = 100, 1000
_PARAMETERS = {"patient", "agent", "date", "action", "_count", "_cursor"}
_PREFIXES = ("eq", "ge", "gt", "le", "lt")


@router.get("/AuditEvent", summary="Search the audit trail (network administrators)")
async def search(request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    _administrator(principal)
    items = list(request.query_params.multi_items())
    conditions, count, cursor = _criteria(principal.network, items)
    await caught_up(ctx)
    rows = await in_transaction(ctx, lambda db: _page(ctx, db, conditions, count, cursor))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"fullUrl": f"{ctx.settings.fhir_base}/AuditEvent/{event['id']}",
                                         "resource": event, "search": {"mode": "match"}} for _, event in rows]}
    if len(rows) == count:
        kept = [(k, v) for k, v in items if k != "_cursor"]
        bundle["link"] = [{"relation": "next", "url": f"{ctx.settings.fhir_base}/AuditEvent?"
                                                     f"{urlencode([*kept, ('_cursor', rows[-1][0])])}"}]
    return FhirResponse(bundle)


@router.get("/AuditEvent/{event_id}", summary="One audit record (network administrators)")
async def read(event_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    _administrator(principal)
    seq = event_id.removeprefix("audit-")
    if not event_id.startswith("audit-") or not seq.isdigit():
        raise NotFound(f"AuditEvent/{event_id} is not known")

    def work(db: Session) -> dict[str, Any]:
        row = db.get(AuditEntry, int(seq))
        if row is None or row.network_id != principal.network:
            raise NotFound(f"AuditEvent/{event_id} is not known")
        return as_resource(ctx, db, row)

    await caught_up(ctx)
    return FhirResponse(await in_transaction(ctx, work))


def as_resource(ctx: ShareContext, db: Session, row: AuditEntry) -> dict[str, Any]:
    return {**ctx.audit.event(db, row), "id": f"audit-{row.seq}"}


def _administrator(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("the audit trail is for network administrators only")


def _criteria(network_id: str, items: list[tuple[str, str]]) -> tuple[list[ColumnElement[bool]], int, int | None]:
    conditions: list[ColumnElement[bool]] = [AuditEntry.network_id == network_id]
    count, cursor = DEFAULT_COUNT, None
    for name, value in items:
        if name not in _PARAMETERS:
            raise BadRequest(f"AuditEvent search takes {', '.join(sorted(_PARAMETERS))}; not {name!r}",
                             code="invalid_search")
        if name == "patient":
            conditions.append(AuditEntry.patient_id == value.rsplit("/", 1)[-1])
        elif name == "agent":
            conditions.append(AuditEntry.agent == value.rsplit("/", 1)[-1])
        elif name == "action":
            conditions.append(AuditEntry.action == value)
        elif name == "date":
            conditions.append(_date_condition(value))
        elif name == "_count":
            if not value.isdigit() or int(value) < 1:
                raise BadRequest("_count must be a positive integer", code="invalid_search")
            count = min(int(value), MAX_COUNT)
        elif name == "_cursor":
            if not value.isdigit():
                raise BadRequest("_cursor is the one a next link gives", code="invalid_search")
            cursor = int(value)
    return conditions, count, cursor


def _date_condition(value: str) -> ColumnElement[bool]:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    found = date_range(value[2:] if value[:2] in _PREFIXES else value)
    if found is None:
        raise BadRequest(f"date: {value!r} is not a FHIR date or dateTime", code="invalid_search")
    low, high = found
    recorded = AuditEntry.recorded
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": (recorded >= low) & (recorded < high), "ge": recorded >= low, "gt": recorded >= high,
        "le": recorded < high, "lt": recorded < low,
    }
    return conditions[prefix]


def _page(ctx: ShareContext, db: Session, conditions: list[ColumnElement[bool]], count: int,
          cursor: int | None) -> list[tuple[int, dict[str, Any]]]:
    query = select(AuditEntry).where(*conditions)
    if cursor is not None:
        query = query.where(AuditEntry.seq < cursor)
    rows = db.scalars(query.order_by(AuditEntry.seq.desc()).limit(count))
    return [(row.seq, as_resource(ctx, db, row)) for row in rows]
