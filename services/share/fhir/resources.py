"""The RESTful interactions on stored resources: create, read, vread, update, delete, history, search."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Header, Request, Response
from sqlalchemy.orm import Session

from services.kit.db import TransactionRequired, without_transaction
from services.kit.errors import BadRequest, Forbidden, NotFound, RenkeiError
from services.kit.tokens import Principal
from services.share.access.gate import SEEN, Seen, seen
from services.share.access.projection import PROJECTED
from services.share.fhir import auditing, binary, bundles
from services.share.fhir.auditing import Interaction
from services.share.fhir.negotiation import bounded_body, check_content_type, documented_headers, optional_headers
from services.share.fhir.responses import FhirResponse, operation_outcome
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store import search as S
from services.share.store.models import IdempotencyRecord
from services.share.store.service import Caller, Stored
from services.share.store.statements import AUDIT_WITH_WRITE, AUDIT_WRITTEN
from services.share.store.types import ADMINISTRATORS_ONLY, READ_ONLY, SUPPORTED
from services.share.store.validation import MAX_BODY_BYTES, parse_resource

router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(binary.negotiate)])
T = TypeVar("T")
_ID = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"?(\d+)"?$')
# Types with a router of their own (services/share/fhir/subscriptions.py: a Subscription's delivery state lives beside
# the resource, and only its owner sees it); the generic interactions and batch entries refuse them.
OWN_ROUTES = frozenset({"Subscription"})


class MethodNotAllowed(RenkeiError):
    status_code = 405
    code = "not_allowed"


class Unprocessable(RenkeiError):
    status_code = 422
    code = "idempotency_key_reused"


def caller_of(principal: Principal) -> Caller:
    """The store's view of a request's caller: the store enforces their access on everything it serves."""
    return Caller(network_id=principal.network, subject=f"{principal.kind}:{principal.subject}",
                  organization=principal.organization, principal=principal)


def resource_type_of(resource_type: str, write: bool = False, reader: Principal | None = None) -> str:
    """``resource_type`` if this server supports it (for writing: if clients may write it); with ``reader``, if that
    caller may read it at all — the audit trail is for network administrators only."""
    if resource_type not in SUPPORTED:
        raise NotFound(f"{resource_type} is not supported by this server; see /fhir/metadata",
                       code="unsupported_resource")
    if resource_type in OWN_ROUTES:  # validated and owner-only there; never through the generic interactions
        raise MethodNotAllowed(f"{resource_type} is served by its own interactions only (see /fhir/metadata)")
    if write and resource_type in READ_ONLY:
        raise MethodNotAllowed(f"{resource_type} is written by the server only")
    if reader is not None and resource_type in ADMINISTRATORS_ONLY and not reader.is_admin:
        raise Forbidden(f"{resource_type} is for network administrators only")
    return resource_type


def checked_id(resource_id: str) -> str:
    if not _ID.match(resource_id):
        raise NotFound(f"{resource_id!r} is not a valid resource id")
    return resource_id


def resource_response(ctx: Context, item: Stored, status: int = 200, prefer: str | None = None) -> Response:
    base = ctx.settings.fhir_base
    headers = {"ETag": bundles.etag(item.version), "Last-Modified": bundles.http_date(item.last_updated)}
    if status == 201 or prefer is not None:
        headers["Location"] = f"{base}/{item.resource_type}/{item.resource_id}/_history/{item.version}"
    wanted = (prefer or "").replace(" ", "")
    if "return=minimal" in wanted:
        return Response(status_code=status, headers=headers)
    if "return=OperationOutcome" in wanted:
        outcome = operation_outcome(status, f"{item.resource_type}/{item.resource_id} version {item.version}",
                                    severity="information")
        outcome["issue"][0]["code"] = "informational"
        return FhirResponse(outcome, status_code=status, headers=headers)
    return FhirResponse(item.body, status_code=status, headers=headers)


# Search ------------------------------------------------------------------------------------------------


def run_search(ctx: Context, db: Session, principal: Principal, resource_type: str, query: S.SearchQuery) -> Response:
    network = principal.network
    templates_installed(ctx, db, principal, resource_type)
    base = ctx.settings.fhir_base
    patient = S.patient_of(query)
    prefetched = None
    if patient and ctx.gate.enforce and S.patient_timeline(query) and not (query.summary_count or query.want_total):
        # A tablet's most frequent search: the page and its patient's access facts in one statement, decided after.
        subject = principal.subject if principal.kind == "user" else ""
        rows, more, facts = ctx.search.page_with_facts(db, network, query, patient, subject, datetime.now(UTC))
        if facts is not None:
            ctx.gate.prime(db, principal, patient, facts)
        prefetched = rows, more
    decided, query.visible = ctx.gate.search_scope(db, principal, resource_type, patient)
    if decided is not None and not decided.allowed:  # as for a patient who does not exist: nothing matches
        seen(db).refused.append(decided.reason)
        if patient and ctx.gate.facts(db, principal, [patient])[patient].team:  # a patient of this network
            seen(db).refused_patients.add(patient)
        return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": 0,
                             "link": [{"relation": "self", "url": f"{base}/{resource_type}?{urlencode(query.echo)}"}]})
    if query.summary_count or (query.count == 0 and query.want_total):
        body = {"resourceType": "Bundle", "type": "searchset", "total": ctx.search.total(db, network, query)}
        return FhirResponse(body)
    rows, more = prefetched or ctx.search.page(db, network, query)
    matches = ctx.store.open_current(db, caller_of(principal), [match.current for match, _ in rows])
    matches = [m for m in matches if ctx.search.confirm(network, query, m.body)]
    included_keys = ctx.search.included(db, network, query, [(m.resource_type, m.resource_id) for m in matches])
    included = ctx.store.heads(db, caller_of(principal), included_keys)
    links = {"self": f"{base}/{resource_type}?{urlencode(query.echo)}"}
    if rows:
        first_head, first_sort = rows[0]
        last_head, last_sort = rows[-1]
        forward_more = more if query.before is None else True
        backward_more = (query.after is not None) or (query.before is not None and more)
        if forward_more:
            cursor = S.encode_cursor(last_sort, last_head.resource_id)
            links["next"] = f"{base}/{resource_type}?{urlencode([*query.echo, ('_cursor', cursor)])}"
        if backward_more:
            cursor = S.encode_cursor(first_sort, first_head.resource_id)
            links["previous"] = f"{base}/{resource_type}?{urlencode([*query.echo, ('_before', cursor)])}"
    total = ctx.search.total(db, network, query) if query.want_total else None
    return FhirResponse(bundles.searchset(base, matches, included, links, total))


def templates_installed(ctx: Context, db: Session, principal: Principal, resource_type: str) -> None:
    """Before Questionnaires are read: the shipped templates are in this network's store (sheets/registry.py)."""
    if resource_type != "Questionnaire" or ctx.store.sheets is None:
        return
    server = Caller(network_id=principal.network, subject="system:renkei")
    ctx.store.sheets.registry.ensure_installed(
        db, principal.network, lambda s, rid, body: ctx.store.create(s, server, "Questionnaire", body, resource_id=rid))


Audited = tuple[Principal, Interaction]


async def in_transaction(ctx: Context, work: Callable[[Session], T], audit: Audited | None = None) -> T:
    """Run ``work`` in one transaction on one worker thread: the hot paths make a single thread hop, not one per
    dependency, and the transaction commits before the response goes out. With ``audit``, the interaction's
    audit record is written with it (auditing.py)."""
    return await _on_db_thread(ctx, ctx.db.transaction, work, audit)


async def reading(ctx: Context, work: Callable[[Session], Response], audit: Audited | None = None) -> Response:
    """Run a read by key, or a single-statement write, on a worker thread without a transaction around it
    (Database.reading). Work that finds it must write more (a new data key, an audit record on SQLite) stops before
    its first write and runs again in a transaction."""
    try:
        return await _on_db_thread(ctx, ctx.db.reading, work, audit)
    except TransactionRequired:
        return await in_transaction(ctx, work, audit)


async def _on_db_thread(ctx: Context, session: Callable[[], AbstractContextManager[Session]],
                        work: Callable[[Session], T], audit: Audited | None) -> T:
    if not ctx.gate.enforce:
        audit = None  # bench/access.py's baseline: neither access decisions nor their audit

    def execute() -> T:
        notes = Seen()
        try:
            with session() as db:
                db.info[SEEN] = notes
                if audit is not None and audit[1].action == "C":
                    # A create writes its record in the statement that writes the resource (statements.py, on
                    # PostgreSQL): both land, or neither; in a transaction, one round trip less. The record is
                    # sealed when the statement is sent, after the access decision.
                    db.info[AUDIT_WITH_WRITE] = lambda: auditing.rows(ctx.audit, db, audit[0], audit[1], notes, 201)
                result = work(db)
                if audit is None or db.info.get(AUDIT_WRITTEN):
                    return result
                rows = auditing.rows(ctx.audit, db, audit[0], audit[1], notes, _status(result))
                if ctx.audit_buffer is not None and audit[1].kind in auditing.READS and without_transaction(db):
                    ctx.audit_buffer.add(rows)  # a read: written with the others in a moment (audit/buffer.py)
                else:
                    auditing.insert(db, rows)  # with the work: in its transaction, or right after its statement
                return result
        except RenkeiError as error:
            if audit is not None:  # the work's writes are gone (or kept, if it said so); its record is not
                with ctx.db.transaction() as db:
                    auditing.record(ctx.audit, db, audit[0], audit[1], notes, error.status_code, error.message)
            raise

    return await ctx.run(execute)


def _status(result: object) -> int:
    return result.status_code if isinstance(result, Response) else 200


@router.get("/{resource_type}")
async def search_get(resource_type: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    items = list(request.query_params.multi_items())
    resource_type_of(resource_type, reader=principal)
    return await searching(ctx, principal, resource_type, S.parse(resource_type, items))


@router.post("/{resource_type}/_search")
async def search_post(resource_type: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    resource_type_of(resource_type, reader=principal)
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise BadRequest("POST _search takes application/x-www-form-urlencoded parameters", code="invalid_search")
    items = list(request.query_params.multi_items()) + parse_qsl((await request.body()).decode(errors="replace"),
                                                                 keep_blank_values=True)
    return await searching(ctx, principal, resource_type, S.parse(resource_type, items))


async def searching(ctx: Context, principal: Principal, resource_type: str, query: S.SearchQuery) -> Response:
    """One patient's resources are found by key, without a transaction (Database.reading); any other search runs
    in a transaction, planned for its own values."""
    run = reading if S.one_patient(query) else in_transaction
    return await run(ctx, lambda db: run_search(ctx, db, principal, resource_type, query),
                     (principal, Interaction("E", "search-type", resource_type)))


# History -----------------------------------------------------------------------------------------------


def history_response(ctx: Context, db: Session, principal: Principal, resource_type: str, resource_id: str | None,
                     request: Request) -> Response:
    raw_count = request.query_params.get("_count", str(S.DEFAULT_COUNT))
    if not raw_count.isdigit():
        raise BadRequest("_count must be a non-negative integer", code="invalid_search")
    count = min(int(raw_count), S.MAX_COUNT)
    versions = ctx.store.history(db, caller_of(principal), resource_type, resource_id, count)
    path = f"{resource_type}/{resource_id}" if resource_id else resource_type
    return FhirResponse(bundles.history(ctx.settings.fhir_base, versions,
                                        {"self": f"{ctx.settings.fhir_base}/{path}/_history"}))


@router.get("/{resource_type}/_history")
async def type_history(resource_type: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    resource_type_of(resource_type, reader=principal)
    return await in_transaction(ctx, lambda db: history_response(ctx, db, principal, resource_type, None, request),
                                (principal, Interaction("R", "history-type", resource_type)))


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(resource_type: str, resource_id: str, request: Request, ctx: Context,
                           principal: CurrentPrincipal) -> Response:
    resource_type_of(resource_type, reader=principal)
    checked_id(resource_id)
    return await in_transaction(
        ctx, lambda db: history_response(ctx, db, principal, resource_type, resource_id, request),
        (principal, Interaction("R", "history-instance", f"{resource_type}/{resource_id}")))


# Instance interactions ----------------------------------------------------------------------------------


@router.get("/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str, request: Request, ctx: Context,
               principal: CurrentPrincipal) -> Response:
    checked_id(resource_id)
    audit = (principal, Interaction("R", "read", f"{resource_type}/{resource_id}"))
    if resource_type == "Binary":  # the content itself, or the resource with it (binary.py)
        return await in_transaction(ctx, lambda db: binary.read(request, ctx, db, principal, resource_id), audit)
    resource_type_of(resource_type, reader=principal)
    caller = caller_of(principal)

    def work(db: Session) -> Response:
        templates_installed(ctx, db, principal, resource_type)
        return resource_response(ctx, ctx.store.read(db, caller, resource_type, resource_id))

    return await reading(ctx, work, audit)


@router.get("/{resource_type}/{resource_id}/_history/{version}")
async def vread(resource_type: str, resource_id: str, version: str, request: Request, ctx: Context,
                principal: CurrentPrincipal) -> Response:
    if not version.isdigit():
        raise NotFound(f"version {version!r} is not known")
    checked_id(resource_id)
    audit = (principal, Interaction("R", "vread", f"{resource_type}/{resource_id}/_history/{version}"))
    if resource_type == "Binary":
        return await in_transaction(
            ctx, lambda db: binary.read(request, ctx, db, principal, resource_id, int(version)), audit)
    resource_type_of(resource_type, reader=principal)
    caller = caller_of(principal)
    return await reading(
        ctx, lambda db: resource_response(ctx, ctx.store.vread(db, caller, resource_type, resource_id, int(version))),
        audit)


@router.post("/{resource_type}", openapi_extra=documented_headers("Prefer", "If-None-Exist", "Idempotency-Key"))
async def create(resource_type: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    # Headers read here rather than declared as parameters: FastAPI's per-parameter work was a tenth of a create's
    # CPU. They stay documented in the OpenAPI description (documented_headers).
    prefer, if_none_exist, idempotency_key = optional_headers(request, "prefer", "if-none-exist", "idempotency-key")
    resource_type_of(resource_type, write=True)
    if resource_type == "Binary":  # content goes to the blob store, encrypted (binary.py)
        return await binary.create(request, ctx, principal, prefer, if_none_exist, idempotency_key)
    check_content_type(request)
    raw = await bounded_body(request, MAX_BODY_BYTES)
    # Validation is CPU work: done here, it keeps a database thread free for database work (settings.db_threads).
    body = parse_resource(raw, resource_type)

    def work(db: Session) -> Response:
        return create_in(ctx, db, principal, resource_type, raw, body, prefer, if_none_exist, idempotency_key)

    run = reading if _single_statement(ctx, resource_type, if_none_exist, idempotency_key) else in_transaction
    return await run(ctx, work, (principal, Interaction("C", "create", resource_type)))


def _single_statement(ctx: Context, resource_type: str, if_none_exist: str | None, idempotency_key: str | None) -> bool:
    """Whether a create is likely one statement (statements.py: the version, head and index rows together), which
    then commits by itself: the BEGIN and COMMIT round trips were a fifth of a create's database time. Not when it
    checks a condition or records an idempotency key first, nor for a Patient, whose data key is always new, nor for
    what access decisions read (a CareTeam, a Consent: their rows in services/share/access/models.py change too),
    nor for a template, whose rules write more. A new sheet's rules mostly write its record and Tasks, which then
    ride in its statement (services/share/sheets/rules.py, SheetRules.beside); those that write more say so."""
    return (ctx.db.single_statement_writes and resource_type != "Patient" and resource_type not in PROJECTED
            and not (resource_type == "Questionnaire" and ctx.store.sheets is not None)
            and not if_none_exist and not idempotency_key)


def create_in(ctx: Context, db: Session, principal: Principal, resource_type: str, raw: bytes, body: dict[str, Any],
              prefer: str | None, if_none_exist: str | None, idempotency_key: str | None) -> Response:
    caller = caller_of(principal)
    if idempotency_key:
        replay = _idempotent_replay(ctx, db, caller, idempotency_key, resource_type, raw, prefer)
        if replay is not None:
            return replay
    if if_none_exist:
        existing = _conditional_match(ctx, db, principal, resource_type, if_none_exist)
        if existing is not None:
            return resource_response(ctx, existing, 200, prefer or "")
    item = ctx.store.create(db, caller, resource_type, body)
    if idempotency_key:
        db.add(IdempotencyRecord(network_id=caller.network_id, principal=caller.subject, key=idempotency_key[:200],
                                 request_hash=_request_hash(resource_type, raw), status=201,
                                 resource_type=resource_type, resource_id=item.resource_id, version=item.version))
    return resource_response(ctx, item, 201, prefer)


def _request_hash(resource_type: str, raw: bytes) -> str:
    return hashlib.sha256(resource_type.encode() + b"\x00" + raw).hexdigest()


def _idempotent_replay(ctx: Context, db: Session, caller: Caller, key: str, resource_type: str, raw: bytes,
                       prefer: str | None) -> Response | None:
    record = db.get(IdempotencyRecord, (caller.network_id, caller.subject, key[:200]))
    if record is None:
        return None
    if record.request_hash != _request_hash(resource_type, raw):
        raise Unprocessable("this Idempotency-Key was used for a different request; use a new key")
    item = ctx.store.vread(db, caller, record.resource_type, record.resource_id, record.version)
    return resource_response(ctx, item, record.status, prefer)


def _conditional_match(ctx: Context, db: Session, principal: Principal, resource_type: str,
                       criteria: str) -> Stored | None:
    items = [(k, v) for k, v in parse_qsl(criteria.split("?", 1)[-1], keep_blank_values=True)]
    query = S.parse(resource_type, items)
    query.count = 2
    rows, _ = ctx.search.page(db, principal.network, query)
    if len(rows) > 1:
        raise RenkeiError(f"If-None-Exist matches {len(rows)} or more resources", status_code=412,
                          code="multiple_matches")
    if not rows:
        return None
    return ctx.store.read(db, caller_of(principal), resource_type, rows[0][0].resource_id)


@router.put("/{resource_type}/{resource_id}")
async def update(resource_type: str, resource_id: str, request: Request, ctx: Context,
                 principal: CurrentPrincipal, prefer: Annotated[str | None, Header()] = None,
                 if_match: Annotated[str | None, Header()] = None) -> Response:
    resource_type_of(resource_type, write=True)
    checked_id(resource_id)
    expected = None
    if if_match is not None:
        match = _ETAG.match(if_match.strip())
        if not match:
            raise BadRequest(f'If-Match must be an ETag like W/"3", not {if_match!r}', code="invalid_if_match")
        expected = int(match.group(1))
    if resource_type == "Binary":
        return await binary.update(request, ctx, principal, resource_id, expected, prefer)
    check_content_type(request)
    raw = await bounded_body(request, MAX_BODY_BYTES)
    body = parse_resource(raw, resource_type)  # CPU work: not on a database thread (see create)
    caller = caller_of(principal)
    return await in_transaction(ctx, lambda db: resource_response(
        ctx, ctx.store.update(db, caller, resource_type, resource_id, body, expected), 200, prefer),
        (principal, Interaction("U", "update", f"{resource_type}/{resource_id}")))


@router.delete("/{resource_type}/{resource_id}")
async def remove(resource_type: str, resource_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    resource_type_of(resource_type, write=True)
    checked_id(resource_id)
    return await in_transaction(ctx, lambda db: delete_response(ctx, db, principal, resource_type, resource_id),
                                (principal, Interaction("D", "delete", f"{resource_type}/{resource_id}")))


def delete_response(ctx: Context, db: Session, principal: Principal, resource_type: str, resource_id: str) -> Response:
    item = ctx.store.delete(db, caller_of(principal), resource_type, resource_id)
    return Response(status_code=204, headers={"ETag": bundles.etag(item.version)} if item else {})
