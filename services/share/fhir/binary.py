"""Binary: attachment content (wound photos, scanned letters) kept encrypted in the blob store, not in the rows.

A stored Binary row never holds the content. Its JSON carries ``contentType``, an optional ``securityContext``
(which puts it in that patient's compartment, so under that patient's data key) and, in ``meta.extension``, the
blob id (``urn:renkei:binary-blob``) and the content's size (``urn:renkei:binary-size``). Binary is a Resource,
not a DomainResource, so R4B gives it no top-level ``extension``; ``meta`` has one, and the stored JSON stays valid.

Writes (POST, PUT) take either the raw bytes under their own ``Content-Type`` (with ``X-Security-Context:
Patient/123``), streamed from the request and never held whole, or a FHIR JSON Binary with base64 ``data``.
Either way the content is counted (over 20 MB → 413), checked against its declared type (415 otherwise),
encrypted chunk by chunk under the data key (``blobs.crypto``) and written to the blob store. A write runs as:

1. a short transaction: the patient exists in the caller's network; fetch (or create) the data key;
2. the upload, outside any transaction (a slow tablet must not hold a database connection);
3. a transaction that writes the row through the ResourceStore as any resource is written.

A failure after step 2 deletes the blob, so a refused or failed write leaves neither a blob nor a row.

Reads: ``Accept`` naming FHIR JSON (or ``_format=json``) gets the Binary resource with ``data`` (base64);
anything else gets the content itself, streamed, with its own ``Content-Type``. The whole blob is authenticated
before the first byte is sent, so tampered content is refused with a 500 "integrity failure" OperationOutcome
(the store's convention) and never served.

This module builds on ``resources`` (responses, idempotency, conditional create), which dispatches Binary here;
it imports it inside functions so that either module can be imported first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import orjson
import structlog
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from services.kit.errors import BadRequest, Conflict, NotFound
from services.kit.tokens import Principal
from services.share.blobs import content as C
from services.share.blobs.crypto import TamperedBlob, decrypt
from services.share.blobs.crypto import encrypt as encrypt_blob
from services.share.blobs.store import BlobNotFound
from services.share.context import ShareContext
from services.share.crypto.datakeys import KeyDestroyed
from services.share.fhir import bundles
from services.share.fhir.negotiation import (
    JSON_FORMATS,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    bounded_body,
    check_accept,
    check_length,
)
from services.share.store.models import IdempotencyRecord, ResourceHead, ResourceVersion
from services.share.store.service import Caller, Gone, IntegrityFailure, PreconditionFailed, Stored
from services.share.store.types import compartment_patient, reference_target
from services.share.store.validation import parse_resource, validate

log = structlog.get_logger(__name__)

BLOB_URL = "urn:renkei:binary-blob"
SIZE_URL = "urn:renkei:binary-size"
MAX_BYTES = C.MAX_BYTES
# A JSON Binary: the base64 of the largest content, plus room for everything else in the resource.
MAX_JSON_BYTES = (MAX_BYTES + 2) // 3 * 4 + 1024 * 1024
# Uploads wait on the network while holding a worker thread; their own limit keeps them from starving reads.
UPLOAD_THREADS = 16
# Only these ask for the resource rather than its content (FHIR: "explicitly specify the FHIR content types").
_FHIR_TYPES = {"application/fhir+json", "application/json+fhir", "application/json"}
_REFERENCE = re.compile(r"^Patient/[A-Za-z0-9\-\.]{1,64}$")
_SERVED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "no-store",
}


# Negotiation -------------------------------------------------------------------------------------------


async def negotiate(request: Request) -> None:
    """The router's Accept check, except that a Binary read may ask for the content's own media type."""
    if _is_content_read(request) and "_format" not in request.query_params:
        return
    check_accept(request)


def _is_content_read(request: Request) -> bool:
    params = request.path_params
    return (request.method == "GET" and params.get("resource_type") == "Binary" and "resource_id" in params
            and not request.url.path.rstrip("/").endswith("/_history"))


def _wants_resource(request: Request, content_type: str) -> bool:
    """True for the Binary resource (FHIR JSON), False for the content; 406 if neither is acceptable."""
    if "_format" in request.query_params:
        return True  # negotiate() let through only JSON formats
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return False
    essence = content_type.split(";")[0].strip().lower()
    major = essence.split("/")[0]
    fhir_q = exact_q = content_q = 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for parameter in fields[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in _FHIR_TYPES:
            fhir_q = max(fhir_q, q)
        if media == essence:
            exact_q = max(exact_q, q)
        if media in (essence, f"{major}/*", "*/*"):
            content_q = max(content_q, q)
    if exact_q > 0 and exact_q >= fhir_q:
        return False
    if fhir_q > 0:
        return True
    if content_q > 0:
        return False
    raise NotAcceptable(f"Accept: {accept} cannot be served; this Binary is {essence} "
                        "(or ask for application/fhir+json)")


# Writes ------------------------------------------------------------------------------------------------


async def create(request: Request, ctx: ShareContext, principal: Principal, prefer: str | None,
                 if_none_exist: str | None, idempotency_key: str | None) -> Response:
    from services.share.fhir.resources import _conditional_match, caller_of, resource_response

    caller = caller_of(principal)
    upload = await _Upload.from_request(request)

    def prepare() -> Response | tuple[str, bytes]:
        with ctx.db.transaction() as db:
            if if_none_exist:
                existing = _conditional_match(ctx, db, principal, "Binary", if_none_exist)
                if existing is not None:
                    return resource_response(ctx, existing, 200, prefer or "")
            return _data_key(ctx, db, caller, upload.body)

    prepared = await run_in_threadpool(prepare)
    if isinstance(prepared, Response):
        return prepared
    key_id, key = prepared
    blob_id = await upload.store(request, ctx, key)

    def commit(db: Session) -> tuple[Response, bool]:
        if idempotency_key:
            replay = _replay(ctx, db, caller, idempotency_key, upload.request_hash, prefer)
            if replay is not None:
                return replay, False  # the first request's blob serves; this copy goes
        _same_key(ctx, db, caller, upload.body, key_id)
        item = ctx.store.create(db, caller, "Binary", upload.body)
        if idempotency_key:
            db.add(IdempotencyRecord(network_id=caller.network_id, principal=caller.subject,
                                     key=idempotency_key[:200], request_hash=upload.request_hash, status=201,
                                     resource_type="Binary", resource_id=item.resource_id, version=item.version))
        return resource_response(ctx, item, 201, prefer), True

    return await run_in_threadpool(_commit, ctx, blob_id, commit)


async def update(request: Request, ctx: ShareContext, principal: Principal, resource_id: str,
                 expected: int | None, prefer: str | None) -> Response:
    """PUT with new content (raw or JSON with ``data``); every version has its own blob."""
    from services.share.fhir.resources import caller_of, resource_response

    caller = caller_of(principal)
    upload = await _Upload.from_request(request)
    if upload.body.get("id") not in (None, resource_id):
        raise BadRequest(f"the body's id {upload.body.get('id')!r} differs from the URL's {resource_id!r}",
                         code="id_mismatch")

    def prepare() -> tuple[str, bytes]:
        with ctx.db.transaction() as db:
            head = db.get(ResourceHead, ("Binary", resource_id))
            if head is None or head.network_id != caller.network_id:
                raise NotFound(f"Binary/{resource_id} is not known")
            if expected is not None and expected != head.version:  # refused before the upload, not after
                raise PreconditionFailed(f"Binary/{resource_id} is at version {head.version}, not {expected}")
            return _data_key(ctx, db, caller, upload.body)

    key_id, key = await run_in_threadpool(prepare)
    blob_id = await upload.store(request, ctx, key)

    def commit(db: Session) -> tuple[Response, bool]:
        _same_key(ctx, db, caller, upload.body, key_id)
        item = ctx.store.update(db, caller, "Binary", resource_id, upload.body, expected)
        return resource_response(ctx, item, 200, prefer), True

    return await run_in_threadpool(_commit, ctx, blob_id, commit)


class _Upload:
    """One write's content: the Binary's JSON (without the content) and where the content comes from."""

    def __init__(self, body: dict[str, Any], check: C.ContentCheck, request_hash: str,
                 content: bytes | None = None, digest: hashlib._Hash | None = None) -> None:
        self.body = body
        self.check = check
        self.request_hash = request_hash
        self.content = content  # a JSON Binary's decoded data; None: stream the request body
        self._digest = digest

    @classmethod
    async def from_request(cls, request: Request) -> _Upload:
        header = request.headers.get("content-type", "")
        if header.split(";")[0].strip().lower() in JSON_FORMATS:
            raw = await bounded_body(request, MAX_JSON_BYTES)
            return await run_in_threadpool(cls._from_json, raw)  # parsing and decoding 27 MB is not for the loop
        return cls._from_raw(request, header)

    @classmethod
    def _from_raw(cls, request: Request, header: str) -> _Upload:
        try:
            media = C.parse_media_type(header)
        except C.ContentRefused as error:
            raise UnsupportedMediaType(str(error), code="unsupported_media_type") from None
        check_length(request, MAX_BYTES)
        body: dict[str, Any] = {"resourceType": "Binary", "contentType": media.header()}
        context = request.headers.get("x-security-context", "").strip()
        if context:
            body["securityContext"] = {"reference": _reference(context)}
        body = validate(body)
        digest = hashlib.sha256(b"Binary\x00raw\x00" + orjson.dumps(body) + b"\x00")
        return cls(body, C.ContentCheck(media), "", digest=digest)

    @classmethod
    def _from_json(cls, raw: bytes) -> _Upload:
        from services.share.fhir.resources import _request_hash

        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            parse_resource(raw, "Binary")  # raises the usual 400 for a body that is not a JSON object
            raise BadRequest("the body must be a FHIR Binary", code="invalid_json")
        encoded = data.pop("data", None)
        # Everything but the content is validated as usual; the content is decoded once, below.
        body = parse_resource(orjson.dumps(data), "Binary")
        if not isinstance(encoded, str):
            raise BadRequest("a Binary needs its content in data (base64), or POST the raw bytes under their own "
                             "Content-Type", code="missing_content", expression=["Binary.data"])
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("Binary.data is not valid base64", code="invalid_resource",
                             expression=["Binary.data"]) from None
        try:
            media = C.parse_media_type(body.get("contentType"))
            body["contentType"] = media.header()
            check = C.ContentCheck(media)
            check.feed(content)
            check.finish()
        except C.TooLarge as error:
            raise PayloadTooLarge(str(error), expression=["Binary.data"]) from None
        except C.ContentRefused as error:
            raise UnsupportedMediaType(str(error), code="content_mismatch",
                                       expression=["Binary.contentType", "Binary.data"]) from None
        _strip_ours(body)
        return cls(body, check, _request_hash("Binary", raw), content=content)

    async def store(self, request: Request, ctx: ShareContext, key: bytes) -> str:
        """Encrypt the content into a new blob; record its id and size in the body. Returns the blob id."""
        blob_id = uuid.uuid4().hex
        if self.content is not None:
            content = self.content
            await run_in_threadpool(ctx.blobs.put, blob_id, encrypt_blob(key, blob_id, [content]))
        else:
            await self._stream(request, ctx, key, blob_id)
        meta = self.body.setdefault("meta", {})
        meta["extension"] = [*meta.get("extension", []), {"url": BLOB_URL, "valueString": blob_id},
                             {"url": SIZE_URL, "valueInteger": self.check.size}]
        return blob_id

    async def _stream(self, request: Request, ctx: ShareContext, key: bytes, blob_id: str) -> None:
        stream = request.stream()
        digest = self._digest
        assert digest is not None

        async def next_piece() -> bytes | None:
            return await anext(stream, None)

        def pieces() -> Iterator[bytes]:
            # Runs in the worker thread; each piece is awaited on the event loop as the client sends it.
            while (piece := anyio.from_thread.run(next_piece)) is not None:
                digest.update(piece)
                yield piece

        def put() -> None:
            ctx.blobs.put(blob_id, encrypt_blob(key, blob_id, C.checked(pieces(), self.check)))

        try:
            await anyio.to_thread.run_sync(put, limiter=_upload_limiter(request))
        except C.TooLarge as error:
            raise PayloadTooLarge(str(error)) from None
        except C.ContentRefused as error:
            raise UnsupportedMediaType(str(error), code="content_mismatch") from None
        except ClientDisconnect:
            raise BadRequest("the upload was interrupted; nothing was stored", code="upload_interrupted") from None
        finally:
            await stream.aclose()
        self.request_hash = digest.hexdigest()


def _commit(ctx: ShareContext, blob_id: str, work: Callable[[Session], tuple[Response, bool]]) -> Response:
    """Run ``work`` in a transaction; unless it commits and keeps the blob, the blob is deleted."""
    kept = False
    try:
        with ctx.db.transaction() as db:
            response, keep = work(db)
        kept = keep  # only once the transaction committed
        return response
    except KeyDestroyed:
        raise Gone("the patient has been erased; nothing was stored") from None
    finally:
        if not kept:
            ctx.blobs.delete(blob_id)


def _data_key(ctx: ShareContext, db: Session, caller: Caller, body: dict[str, Any]) -> tuple[str, bytes]:
    """The (id, key) the content is sealed under: the same key the store will seal the row under."""
    patient_id = compartment_patient("Binary", "", body)
    if patient_id is None and body.get("securityContext") is not None:  # the store refuses it too, but later
        raise BadRequest("Binary.securityContext must reference a Patient of this server (Patient/<id>)",
                         code="unknown_patient", expression=["Binary.securityContext"])
    if patient_id is not None:
        head = db.get(ResourceHead, ("Patient", patient_id))
        if head is None or head.network_id != caller.network_id or head.deleted:
            raise BadRequest(f"Patient/{patient_id} is not known; the patient must exist first",
                             code="unknown_patient", expression=["Binary.securityContext"])
    try:
        return ctx.store.keys.key_for(db, caller.network_id, patient_id)
    except KeyDestroyed:
        raise Gone(f"Patient/{patient_id} has been erased") from None


def _same_key(ctx: ShareContext, db: Session, caller: Caller, body: dict[str, Any], key_id: str) -> None:
    if _data_key(ctx, db, caller, body)[0] != key_id:  # not expected to happen: keys are never replaced
        raise Conflict("the data key changed during the upload; nothing was stored — retry", code="write_conflict")


def _replay(ctx: ShareContext, db: Session, caller: Caller, key: str, request_hash: str,
            prefer: str | None) -> Response | None:
    from services.share.fhir.resources import Unprocessable, resource_response

    record = db.get(IdempotencyRecord, (caller.network_id, caller.subject, key[:200]))
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise Unprocessable("this Idempotency-Key was used for a different request; use a new key")
    item = ctx.store.vread(db, caller, record.resource_type, record.resource_id, record.version)
    return resource_response(ctx, item, record.status, prefer)


def _reference(value: str) -> str:
    target = reference_target({"reference": value})
    relative = f"{target[0]}/{target[1]}" if target else ""
    if not _REFERENCE.match(relative):
        raise BadRequest(f"X-Security-Context must be a reference like Patient/123, not {value!r}",
                         code="invalid_security_context")
    return relative


def _strip_ours(body: dict[str, Any]) -> None:
    """Drop blob extensions a client sent: only the server says where content lives."""
    meta = body.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("extension"), list):
        return
    meta["extension"] = [e for e in meta["extension"]
                         if not (isinstance(e, dict) and e.get("url") in (BLOB_URL, SIZE_URL))]
    if not meta["extension"]:
        del meta["extension"]


def _upload_limiter(request: Request) -> anyio.CapacityLimiter:
    # One per application (so per event loop), made on first use from the event loop itself.
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "binary_upload_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(UPLOAD_THREADS)
        state.binary_upload_limiter = limiter
    return limiter


# Reads -------------------------------------------------------------------------------------------------


def read(request: Request, ctx: ShareContext, db: Session, principal: Principal, resource_id: str,
         version: int | None = None) -> Response:
    from services.share.fhir.resources import caller_of, resource_response

    caller = caller_of(principal)
    if version is None:
        item = ctx.store.read(db, caller, "Binary", resource_id)
    else:
        item = ctx.store.vread(db, caller, "Binary", resource_id, version)
    body = orjson.loads(item.body)
    content_type = str(body.get("contentType") or "application/octet-stream")
    blob = _blob_of(body)
    wants_resource = _wants_resource(request, content_type)
    if blob is None:  # not written through this module: whatever the row holds is all there is
        if wants_resource:
            return resource_response(ctx, item)
        inline = base64.b64decode(str(body.get("data", "")))
        return Response(inline, media_type=content_type, headers=_content_headers(item))
    blob_id, size = blob
    key = _key_of(ctx, db, item)
    if wants_resource:
        content = b"".join(_authenticated(ctx, key, blob_id, size, item))
        encoded = base64.b64encode(content)
        # Spliced into the stored bytes (which end with "}" and hold no "data"), not re-serialised.
        return resource_response(ctx, replace(item, body=item.body[:-1] + b',"data":"' + encoded + b'"}'))
    for _chunk in _authenticated(ctx, key, blob_id, size, item):
        pass  # the first pass: nothing is sent unless the whole blob authenticates
    headers = {**_content_headers(item), "Content-Length": str(size)}
    return StreamingResponse(_plaintext(ctx, key, blob_id, item), media_type=content_type, headers=headers)


def _authenticated(ctx: ShareContext, key: bytes, blob_id: str, size: int, item: Stored) -> Iterator[bytes]:
    """The content, every chunk authenticated and the total checked against the recorded size; else refused."""
    total = 0
    try:
        for chunk in decrypt(key, blob_id, ctx.blobs.open(blob_id)):
            total += len(chunk)
            if total > size:
                raise TamperedBlob("blob is longer than recorded")
            yield chunk
        if total != size:
            raise TamperedBlob("blob is shorter than recorded")
    except (TamperedBlob, BlobNotFound) as error:
        log.error("blob_integrity_failure", resource_type="Binary", resource_id=item.resource_id,
                  version=item.version, blob_id=blob_id, reason=str(error))
        raise IntegrityFailure("this attachment failed its integrity check and is not served") from None


def _plaintext(ctx: ShareContext, key: bytes, blob_id: str, item: Stored) -> Iterator[bytes]:
    """The second pass, after the whole blob authenticated once. Each chunk is authenticated again before it is
    sent, so a blob changed in between is cut off (the client sees a short body against Content-Length)."""
    try:
        yield from decrypt(key, blob_id, ctx.blobs.open(blob_id))
    except (TamperedBlob, BlobNotFound) as error:
        log.error("blob_integrity_failure_while_streaming", resource_type="Binary", resource_id=item.resource_id,
                  version=item.version, blob_id=blob_id, reason=str(error))
        raise


def _key_of(ctx: ShareContext, db: Session, item: Stored) -> bytes:
    """The data key this version's row was sealed under (the read loaded the row, so this is no query)."""
    row = db.get(ResourceVersion, (item.resource_type, item.resource_id, item.version))
    if row is None:
        raise NotFound(f"Binary/{item.resource_id} is not known")
    try:
        return ctx.store.keys.unwrap(db, row.data_key_id)
    except KeyDestroyed:
        raise Gone(f"Binary/{item.resource_id} has been erased") from None


def _blob_of(body: dict[str, Any]) -> tuple[str, int] | None:
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    found = {e.get("url"): e for e in (meta or {}).get("extension", []) if isinstance(e, dict)}
    blob, size = found.get(BLOB_URL), found.get(SIZE_URL)
    if blob is None or size is None:
        return None
    return str(blob["valueString"]), int(size["valueInteger"])


def _content_headers(item: Stored) -> dict[str, str]:
    return {"ETag": bundles.etag(item.version), "Last-Modified": bundles.http_date(item.last_updated),
            **_SERVED_HEADERS}
