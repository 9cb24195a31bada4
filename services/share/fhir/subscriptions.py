"""Subscriptions over HTTP: registering one (validated, its endpoint checked, stored encrypted with its delivery
state), reading, listing and ending the caller's own, and the backport IG's ``$status`` and ``$events``.

A Subscription is its owner's (the same user or system client) and their network administrators': anyone else is
answered 404, as for one that does not exist. The generic interactions (resources.py) and batch entries refuse the
type, so the delivery state and the stored resource cannot drift apart.

What a Subscription may carry in full: ``full-resource`` content only when the owner may read the topic's resource
type at all (a system client's scopes, a user's profession); otherwise it is refused (422) rather than silently
downgraded to ``id-only``, so a hospital system learns at registration, not from missing payloads, that its client
registration lacks a scope. Each notification is still decided per event at delivery (delivery.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from services.kit.db import utcnow
from services.kit.errors import Forbidden, NotFound
from services.kit.outbound import checked_endpoint
from services.kit.tokens import Principal
from services.share.access.decision import Action
from services.share.events.log import Event, events_after, head
from services.share.fhir.auditing import Interaction
from services.share.fhir.negotiation import bounded_body, check_content_type
from services.share.fhir.resources import MethodNotAllowed, checked_id, in_transaction
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal
from services.share.store.service import Caller
from services.share.store.validation import MAX_BODY_BYTES, parse_resource
from services.share.subscriptions import notifications, repository
from services.share.subscriptions.delivery import NEVER, SERVER, told
from services.share.subscriptions.models import SubscriptionState
from services.share.subscriptions.requests import CONTENTS, Requested, Unprocessable, requested
from services.share.subscriptions.topics import TOPICS

router = APIRouter(prefix="/fhir", tags=["fhir"])
TYPE = "Subscription"
MAX_REPLAY = 100  # events one $events call returns at most
MAX_PAGES = 20  # pages of the event log one $events call reads at most (a narrow topic in a long range)


@router.post("/Subscription", summary="Register a topic-based rest-hook Subscription (Subscriptions Backport IG)")
async def create(request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    check_content_type(request)
    body = parse_resource(await bounded_body(request, MAX_BODY_BYTES), TYPE)
    wanted = requested(body)
    # Resolving the endpoint's host blocks: not on a database thread, not on the event loop.
    await asyncio.to_thread(checked_endpoint, wanted.endpoint, allow_loopback=ctx.settings.outbound_allow_loopback)

    def work(db: Session) -> Response:
        _may_subscribe(ctx, db, principal, wanted)
        stored = ctx.store.create(db, _server(principal), TYPE, {**body, "status": "requested"})
        db.add(_state(db, stored.resource_id, principal, wanted))
        headers = {"Location": f"{ctx.settings.fhir_base}/{TYPE}/{stored.resource_id}/_history/{stored.version}"}
        return FhirResponse(stored.body, status_code=201, headers=headers)

    return await in_transaction(ctx, work, (principal, Interaction("C", "create", TYPE)))


@router.get("/Subscription", summary="The caller's own Subscriptions (a network administrator: all of them)")
async def search(ctx: Context, principal: CurrentPrincipal) -> Response:
    def work(db: Session) -> Response:
        rows = repository.visible_to(db, principal)
        entries = [{"fullUrl": f"{ctx.settings.fhir_base}/{TYPE}/{row.id}", "resource": _current(ctx, db, row),
                    "search": {"mode": "match"}} for row in rows]
        return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})

    return await in_transaction(ctx, work, (principal, Interaction("E", "search-type", TYPE)))


@router.get("/Subscription/{subscription_id}", summary="A Subscription, with its delivery status")
async def read(subscription_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(subscription_id)
    return await in_transaction(
        ctx, lambda db: FhirResponse(_current(ctx, db, _owned(db, principal, subscription_id))),
        (principal, Interaction("R", "read", f"{TYPE}/{subscription_id}")))


@router.delete("/Subscription/{subscription_id}", summary="End a Subscription (status off)")
async def remove(subscription_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(subscription_id)

    def work(db: Session) -> Response:
        row = _owned(db, principal, subscription_id)
        row.status = "off"
        ctx.store.delete(db, Caller(row.network_id, SERVER), TYPE, row.id)
        return Response(status_code=204)

    return await in_transaction(ctx, work, (principal, Interaction("D", "delete", f"{TYPE}/{subscription_id}")))


@router.put("/Subscription/{subscription_id}", include_in_schema=False)
async def update(subscription_id: str, principal: CurrentPrincipal) -> Response:
    raise MethodNotAllowed("a Subscription is not changed in place: delete it and register a new one")


@router.get("/Subscription/{subscription_id}/$status", summary="The Subscription's status (backport IG $status)")
async def status(subscription_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(subscription_id)

    def work(db: Session) -> Response:
        row = _owned(db, principal, subscription_id)
        found = notifications.status(ctx.settings.fhir_base, row.id, row.topic, row.status, "query-status",
                                     row.events_since_start, error=_error(row))
        return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
            {"fullUrl": f"urn:uuid:{found['id']}", "resource": found, "search": {"mode": "match"}}]})

    return await in_transaction(ctx, work, (principal, Interaction("R", "status", f"{TYPE}/{subscription_id}")))


@router.get("/Subscription/{subscription_id}/$events", summary="Past notifications by event number (backport IG)")
async def events(subscription_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(subscription_id)
    since = _number(request, "eventsSinceNumber", 1)
    until = _number(request, "eventsUntilNumber", 2**62)
    content = request.query_params.get("content")
    if content is not None and content not in CONTENTS:
        raise Unprocessable(f"content must be one of {', '.join(CONTENTS)}", expression=["content"])
    await ctx.policies.of(principal.network)

    def work(db: Session) -> Response:
        row = _owned(db, principal, subscription_id)
        own = row.owner_kind == principal.kind and row.owner_subject == principal.subject
        # An administrator who is not the owner is told what was sent, never shown the owner's resources.
        wanted = content or row.content if own else "id-only"
        told = _replayed(ctx, db, row, since, until, wanted)
        found = notifications.status(ctx.settings.fhir_base, row.id, row.topic, row.status, "query-event",
                                     row.events_since_start, told)
        return FhirResponse(notifications.bundle(ctx.settings.fhir_base, row.id, found, told))

    return await in_transaction(ctx, work, (principal, Interaction("R", "events", f"{TYPE}/{subscription_id}")))


# Helpers ------------------------------------------------------------------------------------------------------


def _may_subscribe(ctx: Context, db: Session, principal: Principal, wanted: Requested) -> None:
    if not ctx.gate.decision(db, principal, TYPE, Action.CREATE, "").allowed:
        raise Forbidden("this caller may not register Subscriptions (a system client needs "
                        "system/Subscription.c)", code="access_denied")
    reads = ctx.gate.decision(db, principal, wanted.topic.resource_type, Action.READ, "").allowed
    if wanted.content == "full-resource" and not reads:
        raise Unprocessable(f"full-resource content needs read access to {wanted.topic.resource_type}; ask for "
                            "id-only, or for that scope", expression=["Subscription.channel.payload.extension"])


def _server(principal: Principal) -> Caller:
    """The store's caller for the resource itself: the server's own work (no access decision: the owner's rights
    are those of this module), recorded as written by the owner's organisation."""
    return Caller(principal.network, f"{principal.kind}:{principal.subject}", principal.organization)


def _state(db: Session, subscription_id: str, principal: Principal, wanted: Requested) -> SubscriptionState:
    now = utcnow()
    heartbeat = now + timedelta(seconds=wanted.heartbeat_seconds) if wanted.heartbeat_seconds else NEVER
    return SubscriptionState(
        id=subscription_id, network_id=principal.network, owner_kind=principal.kind, owner_subject=principal.subject,
        owner_organization=principal.organization, owner_profession=principal.profession,
        owner_scopes=orjson.dumps(principal.scopes).decode(), topic=wanted.topic.url, patient_id=wanted.patient_id,
        endpoint=wanted.endpoint, content=wanted.content, heartbeat_seconds=wanted.heartbeat_seconds,
        status="requested", start=(start := head(db)), cursor=start, events_since_start=0, failures=0, next_attempt=now,
        heartbeat_due=heartbeat, created=now)


def _owned(db: Session, principal: Principal, subscription_id: str) -> SubscriptionState:
    row = repository.found(db, principal.network, subscription_id)
    if row is None or row.status == "off" or not repository.owns(row, principal):
        raise NotFound(f"{TYPE}/{subscription_id} is not known")
    return row


def _current(ctx: Context, db: Session, row: SubscriptionState) -> dict[str, Any]:
    """The stored resource with the delivery status of the moment (and why, when in error)."""
    body: dict[str, Any] = orjson.loads(ctx.store.read(db, Caller(row.network_id, SERVER), TYPE, row.id).body)
    body["status"] = row.status
    error = _error(row)
    if error:
        body["error"] = error
    return body


def _error(row: SubscriptionState) -> str | None:
    return f"the endpoint failed {row.failures} times in a row" if row.status == "error" else None


def _number(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise Unprocessable(f"{name} must be an event number", expression=[name])
    return int(raw)


def _replayed(ctx: Context, db: Session, row: SubscriptionState, since: int, until: int, content: str
              ) -> list[notifications.Notified]:
    """The notifications of events ``since``..``until`` (inclusive) as the owner may see them now, at most
    MAX_REPLAY of them; events after the subscription's cursor are not notified yet, so not replayed."""
    topic = TOPICS[row.topic]
    last = min(until, row.cursor)
    found: list[Event] = []
    after = max(since - 1, row.start)  # a subscription's events are those after its start
    for _ in range(MAX_PAGES):
        if after >= last or len(found) >= MAX_REPLAY:
            break
        page = [e for e in events_after(db, after, 500, row.network_id) if e.seq <= last]
        if not page:
            break
        found += [e for e in page if topic.matches(e, row.patient_id)]
        after = page[-1].seq
    return told(ctx, db, repository.owner_of(row), found[:MAX_REPLAY], content)
