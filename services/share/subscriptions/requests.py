"""Reading what a client asks for in a Subscription (the Subscriptions R5 Backport IG's R4B profile), or saying
exactly what is wrong with it (422, with the element it is about) — never storing a subscription that cannot work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.kit.errors import RenkeiError
from services.share.subscriptions.topics import TOPICS, Topic

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_CRITERIA = f"{BACKPORT}backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}backport-heartbeat-period"
CONTENTS = ("id-only", "full-resource")
PAYLOAD_TYPE = "application/fhir+json"
MAX_HEADERS = 10
MAX_HEARTBEAT_SECONDS = 24 * 3600
# Headers the delivery sets itself, or that would change what the request is: a client may not name them.
_RESERVED = frozenset({"host", "content-type", "content-length", "transfer-encoding", "connection", "expect",
                       "upgrade", "te", "trailer", "keep-alive", "proxy-authorization"})
_HEADER = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([^\r\n\x00]{0,4096})$")
_PATIENT = re.compile(r"^(?:[A-Za-z]+\?)?patient=(?:Patient/)?([A-Za-z0-9\-.]{1,64})$")


class Unprocessable(RenkeiError):
    status_code = 422
    code = "invalid_subscription"


@dataclass(frozen=True)
class Requested:
    topic: Topic
    patient_id: str  # "" for every patient the owner may read of
    endpoint: str  # not yet checked for where it points (services/kit/outbound.py does that)
    content: str
    heartbeat_seconds: int
    headers: tuple[tuple[str, str], ...]


def requested(body: dict[str, Any]) -> Requested:
    """What ``body`` (a Subscription already valid as FHIR R4B) asks for; Unprocessable if this server cannot."""
    topic = TOPICS.get(str(body.get("criteria") or ""))
    if topic is None:
        raise _bad(f"criteria must be one of this server's topics: {', '.join(TOPICS)}", "Subscription.criteria")
    channel = body.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise _bad("only rest-hook channels are supported", "Subscription.channel.type")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise _bad("a rest-hook channel needs an endpoint", "Subscription.channel.endpoint")
    if channel.get("payload") != PAYLOAD_TYPE:
        raise _bad(f"channel.payload must be {PAYLOAD_TYPE}", "Subscription.channel.payload")
    return Requested(topic, _patient(body), endpoint, _content(channel), _heartbeat(channel),
                     _headers(channel.get("header") or []))


def _patient(body: dict[str, Any]) -> str:
    filters = _extension_values(body.get("_criteria"), FILTER_CRITERIA, "valueString")
    if not filters:
        return ""
    if len(filters) > 1:
        raise _bad("at most one filter criteria is supported", "Subscription.criteria.extension")
    match = _PATIENT.match(str(filters[0]))
    if match is None:
        raise _bad("the only filter supported is patient=Patient/<id>", "Subscription.criteria.extension")
    return match.group(1)


def _content(channel: dict[str, Any]) -> str:
    found = _extension_values(channel.get("_payload"), PAYLOAD_CONTENT, "valueCode")
    content = str(found[0]) if found else "id-only"
    if content not in CONTENTS:
        raise _bad(f"payload content must be one of {', '.join(CONTENTS)}", "Subscription.channel.payload.extension")
    return content


def _heartbeat(channel: dict[str, Any]) -> int:
    found = _extension_values(channel, HEARTBEAT_PERIOD, "valueUnsignedInt")
    if not found:
        return 0
    seconds = found[0]
    if not isinstance(seconds, int) or not 0 <= seconds <= MAX_HEARTBEAT_SECONDS:
        raise _bad(f"the heartbeat period is 0 to {MAX_HEARTBEAT_SECONDS} seconds", "Subscription.channel.extension")
    return seconds


def _headers(lines: list[Any]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADERS:
        raise _bad(f"at most {MAX_HEADERS} channel headers", "Subscription.channel.header")
    found = []
    for line in lines:
        match = _HEADER.match(str(line))
        if match is None or match.group(1).lower() in _RESERVED:
            raise _bad("each channel header is 'Name: value', and not one the server sets itself",
                       "Subscription.channel.header")
        found.append((match.group(1), match.group(2).strip()))
    return tuple(found)


def _extension_values(element: Any, url: str, value: str) -> list[Any]:
    if not isinstance(element, dict):
        return []
    return [e.get(value) for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _bad(message: str, where: str) -> Unprocessable:
    return Unprocessable(message, expression=[where])
