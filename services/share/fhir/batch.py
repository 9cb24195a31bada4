"""``batch`` and ``transaction`` Bundles at ``POST /fhir``.

Every entry goes through the same code as the REST endpoint it stands for (``resources.py``). A batch runs each
entry in its own database transaction and reports each one's outcome; a transaction runs all of them in one
database transaction — DELETE, then POST, then PUT, then GET, as FHIR orders them — and either all are written or
none is, the answer then being the failing entry's OperationOutcome. A transaction's POST entries get their ids up
front, so references to their ``urn:uuid:`` fullUrls are rewritten to ``Type/id`` before anything is validated.

Answers are spliced from the stored bytes, like search Bundles: no resource is re-serialised.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Conflict, NotFound, RenkeiError
from services.kit.tokens import Principal
from services.share.fhir.negotiation import accept_json, bounded_body, check_content_type
from services.share.fhir.resources import (
    _ETAG,
    Unprocessable,
    _conditional_match,
    _request_hash,
    caller_of,
    checked_id,
    delete_response,
    resource_response,
    resource_type_of,
    run_search,
)
from services.share.fhir.responses import FhirResponse, operation_outcome
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store import search as S
from services.share.store.models import IdempotencyRecord
from services.share.store.service import Stored
from services.share.store.types import SUPPORTED
from services.share.store.validation import MAX_BODY_BYTES, load_object, validate

router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(accept_json)])

MAX_ENTRIES = 1000
# JSON nesting of one entry's resource (objects and arrays); FHIR resources stay far below this.
MAX_DEPTH = 100
METHODS = ("GET", "POST", "PUT", "DELETE")
# FHIR's processing order for a transaction (http://hl7.org/fhir/R4B/http.html#trules).
TRANSACTION_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


@dataclass
class Entry:
    """One entry's request, checked for shape; what it asks for is checked when it runs."""

    index: int
    method: str
    url: str
    resource_type: str
    resource_id: str | None  # read, vread, update, delete
    version: str | None  # vread
    query: list[tuple[str, str]] | None  # search
    full_url: str | None
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: str | None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass(frozen=True)
class Retry:
    """An ``Idempotency-Key`` and the hash of the request it was given with."""

    key: str
    request_hash: str


@dataclass
class Result:
    response: Response
    item: Stored | None = None  # the version written or read, when there is one


# The endpoint ----------------------------------------------------------------------------------------------


@router.post("")
@router.post("/", include_in_schema=False)
async def batch_or_transaction(request: Request, ctx: Context, principal: CurrentPrincipal,
                               prefer: Annotated[str | None, Header()] = None,
                               idempotency_key: Annotated[str | None, Header()] = None) -> Response:
    check_content_type(request)
    raw = await bounded_body(request, MAX_BODY_BYTES)
    kind, entries = parse_bundle(raw, ctx.settings.fhir_base)
    retry = Retry(idempotency_key[:200], _request_hash("Bundle", raw)) if idempotency_key else None

    def execute() -> Response:
        if retry is not None:
            replay = replay_bundle(ctx, principal, retry, kind, entries, prefer)
            if replay is not None:
                return replay
        if kind == "transaction":
            return run_transaction(ctx, principal, entries, prefer, retry)
        return run_batch(ctx, principal, entries, prefer, retry)

    return await ctx.run(execute)


# Parsing: anything wrong with the Bundle's shape refuses the whole Bundle --------------------------------


def parse_bundle(raw: bytes, base: str) -> tuple[str, list[Entry]]:
    data = load_object(raw, "a batch or transaction Bundle")
    if data.get("resourceType") != "Bundle":
        raise BadRequest(f"POST to the base URL takes a Bundle, not {data.get('resourceType')!r}",
                         code="wrong_type", expression=["resourceType"])
    kind = data.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(f"Bundle.type must be batch or transaction here, not {kind!r}", code="invalid_bundle",
                         expression=["Bundle.type"])
    raw_entries = data.get("entry", [])
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be an array", code="invalid_bundle", expression=["Bundle.entry"])
    if len(raw_entries) > MAX_ENTRIES:
        raise BadRequest(f"a Bundle may have at most {MAX_ENTRIES} entries, this one has {len(raw_entries)}",
                         code="too_many_entries", expression=["Bundle.entry"])
    for index, item in enumerate(raw_entries):
        if isinstance(item, dict) and "resource" in item and not isinstance(item["resource"], dict):
            raise _shape(index, "resource must be a JSON object (a FHIR resource)", "resource")
    # The Bundle's own elements, checked by the model without its resources: those are validated one by one
    # (and, in a transaction, only after their references are resolved).
    shell = {**data, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                               for e in raw_entries]}
    if not shell["entry"]:
        del shell["entry"]
    try:
        validate(shell)
    except RecursionError:
        raise BadRequest("the Bundle is nested too deeply", code="invalid_bundle") from None
    entries = [_entry(index, item, base) for index, item in enumerate(raw_entries)]
    if kind == "transaction":
        _check_transaction(entries)
    return kind, entries


def _shape(index: int, message: str, element: str | None = None) -> BadRequest:
    where = f"Bundle.entry[{index}]" + (f".{element}" if element else "")
    return BadRequest(f"{where}: {message}", code="invalid_bundle", expression=[where])


def _entry(index: int, item: dict[str, Any], base: str) -> Entry:
    request = item.get("request")
    if not isinstance(request, dict):
        raise _shape(index, "every entry of a batch or transaction needs a request (method and url)", "request")
    method = request.get("method")
    if method not in METHODS:
        raise _shape(index, f"method {method!r} is not supported; use one of {', '.join(METHODS)}",
                     "request.method")
    url = str(request.get("url", ""))
    path = url.removeprefix(base.rstrip("/") + "/")
    if "://" in path:
        raise _shape(index, f"url {url!r} is not on this server; give it relative to the base, like Patient/123",
                     "request.url")
    path, has_query, query = path.partition("?")
    parts = path.strip("/").split("/")
    resource_type = parts[0]
    if resource_type not in SUPPORTED:
        raise _shape(index, f"{resource_type or '(none)'} is not supported by this server; see /fhir/metadata",
                     "request.url")
    resource_id = version = None
    items = None
    if method == "GET" and len(parts) == 1:
        items = parse_qsl(query, keep_blank_values=True)
    elif has_query:
        raise _shape(index, f"{method} {url}: conditional {method.lower()} is not supported", "request.url")
    elif method == "GET" and len(parts) == 2:
        resource_id = parts[1]
    elif method == "GET" and len(parts) == 4 and parts[2] == "_history":
        resource_id, version = parts[1], parts[3]
    elif method == "POST" and len(parts) == 1:
        pass
    elif method in ("PUT", "DELETE") and len(parts) == 2:
        resource_id = parts[1]
    else:
        raise _shape(index, f"{method} {url} is not an interaction a batch or transaction supports here",
                     "request.url")
    if resource_type == "Binary" and method in ("POST", "PUT"):
        # Attachment content belongs in the encrypted blob store, which only /fhir/Binary writes to.
        raise _shape(index, "write Binary resources with POST/PUT /fhir/Binary, not inside a Bundle", "request.url")
    resource = item.get("resource")
    if method in ("POST", "PUT") and resource is None:
        raise _shape(index, f"a {method} entry needs a resource", "resource")
    full_url = item.get("fullUrl")
    return Entry(index=index, method=method, url=url, resource_type=resource_type, resource_id=resource_id,
                 version=version, query=items, full_url=full_url, resource=resource if method in ("POST", "PUT")
                 else None, if_none_exist=request.get("ifNoneExist"), if_match=request.get("ifMatch"))


def _check_transaction(entries: list[Entry]) -> None:
    full_urls: set[str] = set()
    targets: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.full_url is not None and entry.method in ("POST", "PUT"):
            if entry.full_url in full_urls:
                raise _shape(entry.index, f"fullUrl {entry.full_url} appears twice in this transaction", "fullUrl")
            full_urls.add(entry.full_url)
        if entry.method in ("PUT", "DELETE") and entry.resource_id is not None:
            target = (entry.resource_type, entry.resource_id)
            if target in targets:
                raise _shape(entry.index, f"{entry.resource_type}/{entry.resource_id} is changed by more than one "
                             "entry of this transaction", "request.url")
            targets.add(target)


# Running entries: the same code as the REST interactions ---------------------------------------------------


def _validated(entry: Entry) -> dict[str, Any]:
    body = entry.resource or {}
    found = body.get("resourceType")
    if found != entry.resource_type:
        raise BadRequest(f"resourceType {found!r} does not match the request url's {entry.resource_type}",
                         code="wrong_type", expression=["resourceType"])
    return validate(body)


def _if_match(entry: Entry) -> int | None:
    if entry.if_match is None:
        return None
    match = _ETAG.match(entry.if_match.strip())
    if not match:
        raise BadRequest(f'ifMatch must be an ETag like W/"3", not {entry.if_match!r}', code="invalid_if_match")
    return int(match.group(1))


def _existing(ctx: Context, db: Session, principal: Principal, entry: Entry) -> Stored | None:
    """The resource a POST's ifNoneExist matches, if any (then nothing is created)."""
    resource_type_of(entry.resource_type, write=True)
    if not entry.if_none_exist:
        return None
    return _conditional_match(ctx, db, principal, entry.resource_type, entry.if_none_exist)


def _run(ctx: Context, db: Session, principal: Principal, entry: Entry, prefer: str | None,
         existing: Stored | None = None, assigned_id: str | None = None) -> Result:
    caller = caller_of(principal)
    if entry.method == "POST":
        resource_type_of(entry.resource_type, write=True)
        body = _validated(entry)  # even when ifNoneExist matched, as a single create does
        if existing is not None:
            return Result(resource_response(ctx, existing, 200, prefer or ""), existing)
        item = ctx.store.create(db, caller, entry.resource_type, body, resource_id=assigned_id)
        return Result(resource_response(ctx, item, 201, prefer), item)
    if entry.method == "PUT":
        resource_type_of(entry.resource_type, write=True)
        resource_id = checked_id(entry.resource_id or "")
        expected = _if_match(entry)
        item = ctx.store.update(db, caller, entry.resource_type, resource_id, _validated(entry), expected)
        return Result(resource_response(ctx, item, 200, prefer), item)
    if entry.method == "DELETE":
        return Result(delete_response(ctx, db, principal, entry.resource_type, entry.resource_id or ""))
    resource_type = resource_type_of(entry.resource_type, reader=principal)
    if entry.query is not None:
        return Result(run_search(ctx, db, principal, resource_type, S.parse(resource_type, entry.query)))
    resource_id = checked_id(entry.resource_id or "")
    if entry.version is None:
        item = ctx.store.read(db, caller, resource_type, resource_id)
    elif entry.version.isdigit():
        item = ctx.store.vread(db, caller, resource_type, resource_id, int(entry.version))
    else:
        raise NotFound(f"version {entry.version!r} is not known")
    return Result(resource_response(ctx, item), item)


# Batch ------------------------------------------------------------------------------------------------------


def run_batch(ctx: Context, principal: Principal, entries: list[Entry], prefer: str | None,
              retry: Retry | None = None) -> Response:
    answers, outcomes = [], []
    for entry in entries:
        try:
            with ctx.db.transaction() as db:
                if entry.resource is not None:
                    _resolve_references(entry, {})  # a batch's entries are independent: nothing to resolve to
                existing = _existing(ctx, db, principal, entry) if entry.method == "POST" else None
                result = _run(ctx, db, principal, entry, prefer, existing)
        except RenkeiError as error:
            answers.append(_failed_entry(error))
            outcomes.append({"m": entry.method, "s": error.status_code, "c": error.code})
            continue
        except IntegrityError:
            conflict = _write_conflict()
            answers.append(_failed_entry(conflict))
            outcomes.append({"m": entry.method, "s": conflict.status_code, "c": conflict.code})
            continue
        answers.append(_entry_bytes(ctx, entry, result, prefer))
        outcomes.append(_outcome(entry, result))
    if retry is not None:
        try:
            with ctx.db.transaction() as db:
                _remember(db, principal, retry, outcomes)
        except IntegrityError:
            pass  # a concurrent retry of the same batch recorded it first
    return FhirResponse(_bundle("batch-response", answers))


# Retries (Idempotency-Key) -----------------------------------------------------------------------------------


def _outcome(entry: Entry, result: Result) -> dict[str, Any]:
    """What a replay needs: which version an entry wrote or read, never the content."""
    outcome: dict[str, Any] = {"m": entry.method, "s": result.response.status_code}
    if result.item is not None and entry.method in ("POST", "PUT"):
        outcome.update(t=result.item.resource_type, i=result.item.resource_id, v=result.item.version)
    return outcome


def _remember(db: Session, principal: Principal, retry: Retry, outcomes: list[dict[str, Any]]) -> None:
    caller = caller_of(principal)
    db.add(IdempotencyRecord(network_id=caller.network_id, principal=caller.subject, key=retry.key,
                             request_hash=retry.request_hash, status=200, resource_type="Bundle", resource_id="",
                             version=0, entries=outcomes))


def replay_bundle(ctx: Context, principal: Principal, retry: Retry, kind: str, entries: list[Entry],
                  prefer: str | None) -> Response | None:
    """The first answer again, rebuilt from the versions it wrote (reads are simply run again)."""
    caller = caller_of(principal)
    with ctx.db.transaction() as db:
        record = db.get(IdempotencyRecord, (caller.network_id, caller.subject, retry.key))
        if record is None:
            return None
        if record.request_hash != retry.request_hash or record.entries is None:
            raise Unprocessable("this Idempotency-Key was used for a different request; use a new key")
        answers = []
        for entry, outcome in zip(entries, record.entries, strict=False):
            try:
                answers.append(_replayed_entry(ctx, db, principal, entry, outcome, prefer))
            except RenkeiError as error:
                answers.append(_failed_entry(error))
        return FhirResponse(_bundle(f"{kind}-response", answers))


def _replayed_entry(ctx: Context, db: Session, principal: Principal, entry: Entry, outcome: dict[str, Any],
                    prefer: str | None) -> bytes:
    if "c" in outcome:
        raise RenkeiError("this entry failed when the request was first made", code=outcome["c"],
                          status_code=outcome["s"])
    if "i" in outcome:
        item = ctx.store.vread(db, caller_of(principal), outcome["t"], outcome["i"], outcome["v"])
        return _entry_bytes(ctx, entry, Result(resource_response(ctx, item, outcome["s"], prefer), item), prefer)
    if entry.method == "GET":
        return _entry_bytes(ctx, entry, _run(ctx, db, principal, entry, prefer), prefer)
    return orjson.dumps({"response": {"status": _status(outcome["s"])}})


# Transaction ------------------------------------------------------------------------------------------------


def run_transaction(ctx: Context, principal: Principal, entries: list[Entry], prefer: str | None,
                    retry: Retry | None = None) -> Response:
    results: dict[int, Result] = {}
    ordered = sorted(entries, key=lambda e: TRANSACTION_ORDER[e.method])
    posts = [e for e in ordered if e.method == "POST"]
    with ctx.db.transaction() as db:
        for entry in ordered:
            if entry.method == "DELETE":
                with _failing(entry):
                    results[entry.index] = _run(ctx, db, principal, entry, prefer)
        # Ids first (an ifNoneExist match keeps the id it has), so that every reference can be resolved before
        # anything is validated or stored.
        existing: dict[int, Stored | None] = {}
        assigned: dict[int, str] = {}
        targets: dict[str, str] = {}
        for entry in posts:
            with _failing(entry):
                found = existing[entry.index] = _existing(ctx, db, principal, entry)
            assigned[entry.index] = found.resource_id if found is not None else uuid.uuid4().hex
            if entry.full_url:
                targets[entry.full_url] = f"{entry.resource_type}/{assigned[entry.index]}"
        for entry in ordered:
            if entry.method == "PUT" and entry.full_url:
                targets[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"
        for entry in ordered:
            if entry.resource is not None:
                with _failing(entry):
                    _resolve_references(entry, targets)
        # Patients first: a resource in a patient's compartment needs its patient to exist.
        for entry in sorted(posts, key=lambda e: e.resource_type != "Patient"):
            with _failing(entry):
                results[entry.index] = _run(ctx, db, principal, entry, prefer, existing[entry.index],
                                            assigned[entry.index])
        for entry in ordered:
            if entry.method in ("PUT", "GET"):
                with _failing(entry):
                    results[entry.index] = _run(ctx, db, principal, entry, prefer)
        if retry is not None:  # in the same transaction: remembered exactly when the writes land
            _remember(db, principal, retry, [_outcome(entry, results[entry.index]) for entry in entries])
    answers = [_entry_bytes(ctx, entry, results[entry.index], prefer) for entry in entries]
    return FhirResponse(_bundle("transaction-response", answers))


@contextmanager
def _failing(entry: Entry) -> Iterator[None]:
    """One step of one entry: its failure fails the whole transaction, naming the entry."""
    try:
        yield
    except RenkeiError as error:
        raise _transaction_failed(entry, error) from None
    except IntegrityError:
        raise _transaction_failed(entry, _write_conflict()) from None


def _transaction_failed(entry: Entry, error: RenkeiError) -> RenkeiError:
    where = entry.where
    expression = [where, *(_within(where, entry.resource_type, e) for e in error.expression or [])]
    message = (f"{where} ({entry.method} {entry.url}) failed, so nothing in this transaction was written: "
               f"{error.message}")
    return RenkeiError(message, code=error.code, status_code=error.status_code, headers=error.headers,
                       expression=expression)


def _within(where: str, resource_type: str, expression: str) -> str:
    """``Patient.gender`` of entry 2 → ``Bundle.entry[2].resource.gender``."""
    if expression.startswith(resource_type + ".") or expression.startswith(resource_type + "["):
        expression = expression[len(resource_type):].lstrip(".")
    return f"{where}.resource" + ("" if expression.startswith("[") else ".") + expression if expression else where


def _write_conflict() -> Conflict:
    return Conflict("a concurrent change conflicted with this entry; retry it", code="write_conflict")


def _resolve_references(entry: Entry, targets: dict[str, str]) -> None:
    """Rewrite every reference to another entry's fullUrl into that entry's ``Type/id``, anywhere in the
    resource. A ``urn:uuid:`` reference that names no entry is refused — it would be stored dangling, and outside
    its patient's compartment — except inside a document Bundle, whose entries refer to each other that way.
    The walk also refuses a body nested deeper than a FHIR resource ever is (validation would overflow the stack)."""
    resource = entry.resource or {}
    check = resource.get("resourceType") != "Bundle"
    unresolved: list[str] = []
    stack: list[tuple[Any, str, int]] = [(resource, entry.resource_type, 1)]
    while stack:  # iterative, so a deep body cannot exhaust the interpreter's stack here either
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"{path}: the resource is nested more than {MAX_DEPTH} levels deep",
                             code="invalid_resource", expression=[path])
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    if value in targets:
                        node[key] = targets[value]
                    elif check and value.startswith("urn:uuid:"):
                        unresolved.append(f"{path}.{key}")
                elif isinstance(value, dict | list):
                    stack.append((value, f"{path}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{position}]", depth + 1) for position, value in enumerate(node)
                         if isinstance(value, dict | list))
    if unresolved:
        unresolved.sort()
        raise BadRequest(f"{', '.join(unresolved)}: a urn:uuid reference must name the fullUrl of an entry of the "
                         "same transaction (a batch does not resolve references between its entries)",
                         code="unresolved_reference", expression=unresolved)


# Answers ------------------------------------------------------------------------------------------------


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _entry_bytes(ctx: Context, entry: Entry, result: Result, prefer: str | None) -> bytes:
    answer = result.response
    response: dict[str, Any] = {"status": _status(answer.status_code)}
    head: dict[str, Any] = {}
    item = result.item
    if item is not None:
        head["fullUrl"] = f"{ctx.settings.fhir_base}/{item.resource_type}/{item.resource_id}"
    if "location" in answer.headers:
        response["location"] = answer.headers["location"]
    if "etag" in answer.headers:
        response["etag"] = answer.headers["etag"]
    if item is not None:
        response["lastModified"] = item.last_updated.isoformat(timespec="milliseconds")
    elif "last-modified" in answer.headers:
        response["lastModified"] = parsedate_to_datetime(answer.headers["last-modified"]).isoformat()
    body = bytes(answer.body)
    wants_outcome = "return=OperationOutcome" in (prefer or "").replace(" ", "")
    if body and entry.method in ("POST", "PUT") and wants_outcome:
        response["outcome"] = orjson.loads(body)
        body = b""
    head["response"] = response
    encoded = orjson.dumps(head)
    if not body:
        return encoded
    return encoded[:-1] + b',"resource":' + body + b"}"


def _failed_entry(error: RenkeiError) -> bytes:
    outcome = operation_outcome(error.status_code, error.message, code=error.code, expression=error.expression)
    return orjson.dumps({"response": {"status": _status(error.status_code), "outcome": outcome}})


def _bundle(kind: str, entries: list[bytes]) -> bytes:
    head = orjson.dumps({"resourceType": "Bundle", "id": uuid.uuid4().hex, "type": kind})
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
