"""Recording security events in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.audit.models import SecurityEvent

SUCCESS = "success"
FAILURE = "failure"


def record(
    db: Session,
    type: str,
    outcome: str,
    *,
    network_id: str | None = None,
    user_id: str | None = None,
    client_id: str | None = None,
    session_id: str | None = None,
    device_id: str | None = None,
    address: str | None = None,
    **detail: Any,
) -> None:
    db.add(
        SecurityEvent(
            type=type,
            outcome=outcome,
            network_id=network_id,
            user_id=user_id,
            client_id=client_id,
            session_id=session_id,
            device_id=device_id,
            address=address,
            detail=detail,
        )
    )


def list_events(db: Session, network_id: str, *, type: str | None = None, limit: int = 100) -> list[SecurityEvent]:
    query = select(SecurityEvent).where(SecurityEvent.network_id == network_id)
    if type:
        query = query.where(SecurityEvent.type == type)
    return list(db.scalars(query.order_by(SecurityEvent.id.desc()).limit(limit)))
