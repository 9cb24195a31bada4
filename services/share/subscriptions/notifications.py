"""Notification Bundles as the Subscriptions R5 Backport IG shapes them for R4B.

R4B has the SubscriptionStatus resource (R4 would carry the same facts in a Parameters resource), so every
notification is a ``history`` Bundle whose first entry is a SubscriptionStatus: its ``type`` says what the Bundle
is (handshake, heartbeat, event-notification, query-status, query-event). Each event's ``eventNumber`` is its
sequence number in the event log: increasing, never reused, the same in a replay ($events) as in the delivery —
so a receiver drops what it has already seen by number. Numbers are not contiguous per subscription (the log is
shared by every topic and network); ``eventsSinceSubscriptionStart`` counts what this subscription delivered.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.share.events.log import Event


@dataclass(frozen=True)
class Notified:
    """One event as a notification carries it: the event, and the resource as the owner may see it (full-resource
    content only; None otherwise, or when the resource could not be served)."""

    event: Event
    resource: bytes | None = None


def status(base: str, subscription_id: str, topic: str, state: str, kind: str, events_since_start: int,
           events: Sequence[Notified] = (), error: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "resourceType": "SubscriptionStatus", "id": uuid.uuid4().hex, "status": state, "type": kind,
        "eventsSinceSubscriptionStart": str(events_since_start),
        "subscription": {"reference": f"{base}/Subscription/{subscription_id}"}, "topic": topic,
    }
    if events:
        found["notificationEvent"] = [_event(base, item.event) for item in events]
    if error:
        found["error"] = [{"text": error}]
    return found


def bundle(base: str, subscription_id: str, subscription_status: dict[str, Any],
           events: Sequence[Notified] = ()) -> bytes:
    """The notification Bundle: the status first, then each focus resource sent in full."""
    first = {"fullUrl": f"urn:uuid:{subscription_status['id']}", "resource": subscription_status,
             "request": {"method": "GET", "url": f"{base}/Subscription/{subscription_id}/$status"},
             "response": {"status": "200"}}
    found = orjson.dumps({"resourceType": "Bundle", "id": uuid.uuid4().hex, "type": "history",
                          "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "entry": [first]})
    sent = [item for item in events if item.resource is not None]
    if not sent:
        return found
    # The resources are the store's bytes as the owner may see them, spliced in unparsed ("entry" comes last).
    return found[:-2] + b"," + b",".join(_entry_bytes(base, item) for item in sent) + b"]}"


def _event(base: str, event: Event) -> dict[str, Any]:
    return {"eventNumber": str(event.seq),
            "focus": {"reference": f"{base}/{event.resource_type}/{event.resource_id}"}}  # an entry's fullUrl


def _entry_bytes(base: str, item: Notified) -> bytes:
    event = item.event
    created = event.kind == "created"
    request = {"method": "POST" if created else "PUT",
               "url": event.resource_type if created else f"{event.resource_type}/{event.resource_id}"}
    head = orjson.dumps({"fullUrl": f"{base}/{event.resource_type}/{event.resource_id}", "request": request,
                         "response": {"status": "201" if created else "200"}})
    assert item.resource is not None
    return head[:-1] + b',"resource":' + item.resource + b"}"
