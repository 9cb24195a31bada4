"""Reading the event log: what happened after a cursor, in sequence order (ids only, never clinical text)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.kit.db import utcnow
from services.share.access.layout import DRAFT_MARK


@dataclass(frozen=True)
class Event:
    seq: int
    network_id: str
    patient_id: str
    resource_type: str
    resource_id: str
    version: int
    kind: str
    author_organization: str
    draft: bool

    @property
    def layout(self) -> bytes | None:
        """What the access gate reads to tell a draft sheet (Gate.readable treats an event as the row it names)."""
        return DRAFT_MARK if self.draft else None

    def frame(self) -> dict[str, object]:
        """The WebSocket ``event`` frame (docs/push-protocol.md)."""
        return {"type": "event", "seq": self.seq, "kind": self.kind,
                "resource": {"type": self.resource_type, "id": self.resource_id, "version": str(self.version)},
                "patient": self.patient_id or None}

    @cached_property
    def frame_text(self) -> str:
        """The frame as sent: encoded once for all the connections an event goes to (a team's twenty tablets)."""
        return orjson.dumps(self.frame()).decode()


_COLUMNS = "seq, network_id, patient_id, resource_type, resource_id, version, kind, author_organization, draft"
_SELECT = f"SELECT {_COLUMNS} FROM event_log WHERE"  # noqa: S608 - constants only
_AFTER = text(f"{_SELECT} seq > :after ORDER BY seq LIMIT :limit")
_AFTER_IN = text(f"{_SELECT} network_id = :network AND seq > :after ORDER BY seq LIMIT :limit")
_HEAD = text("SELECT coalesce(max(seq), 0) FROM event_log")


def events_after(db: Session, after: int, limit: int, network_id: str | None = None) -> list[Event]:
    """Up to ``limit`` numbered events after ``after``, in order; of one network when ``network_id`` is given."""
    if network_id is None:
        rows = db.execute(_AFTER, {"after": after, "limit": limit})
    else:
        rows = db.execute(_AFTER_IN, {"network": network_id, "after": after, "limit": limit})
    return [Event(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], bool(r[8])) for r in rows]


# Events that need someone now: an urgent message ("urgent"), access to a patient outside the team
# ("break-glass", about the Patient). What wakes a tablet asleep in a bag (Web Push) reads these.
URGENT_KINDS = frozenset({"urgent", "break-glass"})

_URGENT = text(
    "INSERT INTO event_log (network_id, patient_id, resource_type, resource_id, version, kind, author_organization,"
    " draft, recorded) VALUES (:network, :patient, :type, :id, :version, :kind, :organization, :draft, :now)"
)


def append_urgent(db: Session, network_id: str, patient_id: str, resource_type: str, resource_id: str, version: int,
                  author_organization: str, kind: str = "urgent") -> None:
    """A second event, beside the write's own, in the write's transaction: one of ``URGENT_KINDS``."""
    assert kind in URGENT_KINDS
    db.execute(_URGENT, {"network": network_id, "patient": patient_id, "type": resource_type, "id": resource_id,
                         "version": version, "kind": kind, "organization": author_organization, "draft": False,
                         "now": utcnow()})


def head(db: Session) -> int:
    """The highest sequence number given so far (0: none)."""
    return int(db.scalar(_HEAD) or 0)
