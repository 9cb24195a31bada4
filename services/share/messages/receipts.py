"""Read positions per member and thread, and whose they are for one message."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from services.share.messages.models import ReadPosition

_CREATED = text("SELECT seq FROM event_log WHERE resource_type = 'Communication' AND resource_id = :id"
                " AND version = 1")


def message_seq(db: Session, message_id: str) -> int | None:
    """Where a message stands in the event log (its creation), None while not yet numbered."""
    found = db.scalar(_CREATED, {"id": message_id})
    return None if found is None else int(found)


def mark_read(db: Session, network_id: str, patient_id: str, reader: str, seq: int, now: datetime) -> int:
    """Move ``reader``'s position in the thread up to ``seq`` (never back); the position now."""
    row = db.get(ReadPosition, (network_id, patient_id, reader), with_for_update=True)
    if row is None:
        db.add(ReadPosition(network_id=network_id, patient_id=patient_id, reader=reader, seq=seq, read_at=now))
        return seq
    if seq > row.seq:
        row.seq, row.read_at = seq, now
    return row.seq


def positions(db: Session, network_id: str, patient_id: str) -> dict[str, ReadPosition]:
    rows = db.scalars(select(ReadPosition).where(ReadPosition.network_id == network_id,
                                                 ReadPosition.patient_id == patient_id))
    return {row.reader: row for row in rows}
