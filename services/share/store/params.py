"""Search parameters per resource type, and how their values are read from a resource.

Each parameter names its kind (FHIR search types: token, string, date, reference, uri) and the element paths it
reads. Extraction walks plain JSON dicts — resources are never re-parsed into models to be indexed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # token | string | date | reference | uri
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference: the resource types it may point to (for _include)

    @property
    def vocabulary(self) -> bool:
        """Whether its values come from a closed vocabulary (codes, canonicals), not identifying anyone: their
        blind-index tokens may be remembered (BlindIndex.vocabulary_token)."""
        return self.kind in ("token", "uri") and self.name != "identifier"


def _p(name: str, kind: str, *paths: str, targets: tuple[str, ...] = ()) -> Param:
    return Param(name, kind, paths, targets)


PATIENT = ("Patient",)
_CLINICAL_SUBJECT = (
    _p("patient", "reference", "subject", targets=PATIENT),
    _p("subject", "reference", "subject", targets=PATIENT),
)

PARAMS: dict[str, dict[str, Param]] = {
    resource_type: {p.name: p for p in params}
    for resource_type, params in {
        "Patient": (
            _p("identifier", "token", "identifier"),
            _p("name", "string", "name"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
            _p("birthdate", "date", "birthDate"),
            _p("gender", "token", "gender"),
        ),
        "RelatedPerson": (_p("patient", "reference", "patient", targets=PATIENT), _p("name", "string", "name")),
        "Organization": (
            _p("name", "string", "name"),
            _p("type", "token", "type"),
            _p("identifier", "token", "identifier"),
        ),
        "Practitioner": (_p("name", "string", "name"), _p("identifier", "token", "identifier")),
        "PractitionerRole": (
            _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
            _p("organization", "reference", "organization", targets=("Organization",)),
            _p("role", "token", "code"),
        ),
        "CareTeam": (
            *_CLINICAL_SUBJECT,
            _p("status", "token", "status"),
            _p("category", "token", "category"),
            _p(
                "participant",
                "reference",
                "participant.member",
                targets=("Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "Patient"),
            ),
        ),
        "Consent": (_p("patient", "reference", "patient", targets=PATIENT), _p("status", "token", "status")),
        "Questionnaire": (
            _p("name", "string", "name"),
            _p("title", "string", "title"),
            _p("url", "uri", "url"),
            _p("version", "token", "version"),
            _p("status", "token", "status"),
        ),
        "QuestionnaireResponse": (
            *_CLINICAL_SUBJECT,
            _p("questionnaire", "uri", "questionnaire"),
            _p("status", "token", "status"),
            _p("authored", "date", "authored"),
            _p("author", "reference", "author", targets=("Practitioner", "PractitionerRole", "Organization")),
        ),
        "Composition": (
            *_CLINICAL_SUBJECT,
            _p("type", "token", "type"),
            _p("date", "date", "date"),
            _p("status", "token", "status"),
        ),
        "Bundle": (_p("type", "token", "type"), _p("identifier", "token", "identifier")),
        "Communication": (
            *_CLINICAL_SUBJECT,
            _p("sent", "date", "sent"),
            _p("category", "token", "category"),
            _p(
                "recipient",
                "reference",
                "recipient",
                targets=("Practitioner", "PractitionerRole", "Organization", "CareTeam", "Patient"),
            ),
            _p("priority", "token", "priority"),
            _p("status", "token", "status"),
        ),
        "Task": (
            _p("patient", "reference", "for", targets=PATIENT),
            _p("owner", "reference", "owner", targets=("Practitioner", "PractitionerRole", "Organization")),
            _p("status", "token", "status"),
            _p("focus", "reference", "focus", targets=("QuestionnaireResponse",)),
            _p("code", "token", "code"),
            _p("requester", "reference", "requester", targets=("Practitioner", "PractitionerRole", "Organization")),
            # When the task is due (restriction.period.end): what is overdue is due=lt<today>.
            _p("due", "date", "restriction.period.end"),
        ),
        "Binary": (),
        "DocumentReference": (
            *_CLINICAL_SUBJECT,
            _p("type", "token", "type"),
            _p("status", "token", "status"),
            _p("date", "date", "date"),
        ),
        "Observation": (
            *_CLINICAL_SUBJECT,
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        ),
        "AuditEvent": (_p("date", "date", "recorded"), _p("type", "token", "type")),
        "Subscription": (_p("status", "token", "status"),),
    }.items()
}

COMMON = ("_id", "_lastUpdated")


def values_at(body: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path, flattening lists at each step."""
    current = [body]
    for step in path.split("."):
        following = []
        for item in current:
            value = item.get(step) if isinstance(item, dict) else None
            if isinstance(value, list):
                following.extend(value)
            elif value is not None:
                following.append(value)
        current = following
    yield from current


def token_values(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) pairs from a code, Coding, CodeableConcept or Identifier."""
    if isinstance(value, str | bool):
        yield None, str(value).lower() if isinstance(value, bool) else value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value.get("coding") or []:
                yield from token_values(coding)
        elif "code" in value:
            yield value.get("system"), str(value["code"])
        elif "value" in value:  # Identifier
            yield value.get("system"), str(value["value"])


_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
)


def string_values(value: Any) -> Iterator[str]:
    """Searchable text from a string, HumanName or Address (every part separately, and the whole)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in _STRING_PARTS:
            part = value.get(key)
            for text in part if isinstance(part, list) else [part]:
                if isinstance(text, str):
                    yield text
        family, given = value.get("family"), value.get("given") or []
        if isinstance(family, str) and given:
            yield family + "".join(g for g in given if isinstance(g, str))  # 山田太郎 as one string too


_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


# Japan Standard Time (no daylight saving): the zone of dates given without one, in resources and in searches.
LOCAL_TIME = timezone(timedelta(hours=9), "JST")


@functools.lru_cache(maxsize=64)
def _zone(offset: str) -> tzinfo:
    """A ±hh:mm offset as a zone (raising ValueError for an impossible one); few distinct offsets ever occur."""
    found = datetime.strptime(offset, "%z").tzinfo
    assert found is not None
    return found


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """[low, high) in UTC for a FHIR date/dateTime/instant at its own precision; None if malformed."""
    match = _DATE.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        # Dates and zone-less times are Japan's calendar: a sheet "of 21 November" is 21 November in Tokyo.
        tz = LOCAL_TIME if zone is None else UTC if zone == "Z" else _zone(zone)
        if month is None:
            low = datetime(int(year), 1, 1, tzinfo=LOCAL_TIME)
            high = low.replace(year=low.year + 1)
        elif day is None:
            low = datetime(int(year), int(month), 1, tzinfo=LOCAL_TIME)
            high = (low.replace(day=28) + timedelta(days=4)).replace(day=1)
        elif hour is None:
            low = datetime(int(year), int(month), int(day), tzinfo=LOCAL_TIME)
            high = low + timedelta(days=1)
        else:
            low = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=tz)
            high = low + (timedelta(minutes=1) if second is None else timedelta(seconds=1))
        return low.astimezone(UTC), high.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def date_values(value: Any) -> Iterator[tuple[datetime, datetime]]:
    if isinstance(value, str):
        found = date_range(value)
        if found:
            yield found
    elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        low = start[0] if start else datetime(1, 1, 1, tzinfo=UTC)
        high = end[1] if end else datetime(9999, 12, 31, tzinfo=UTC)
        yield low, high
