"""Registered devices (tablets). Revoking one ends every session opened on it."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.audit.recorder import SUCCESS, record
from services.auth.directory.models import User
from services.auth.sessions.models import Device, LoginSession
from services.auth.sessions.revocation import revoke_device_sessions
from services.kit.db import utcnow
from services.kit.errors import NotFound


def register(db: Session, user: User, name: str, session_id: str | None = None) -> Device:
    device = Device(id=uuid.uuid4().hex, user_id=user.id, name=name, created_at=utcnow())
    db.add(device)
    db.flush()
    if session_id:
        # The session that registers the tablet is the tablet's: bind it, so revoking the device ends it too.
        session = db.get(LoginSession, session_id)
        if session is not None and session.user_id == user.id and session.device_id is None:
            session.device_id = device.id
    record(db, "device_registered", SUCCESS, network_id=user.network_id, user_id=user.id, device_id=device.id)
    return device


def devices_of(db: Session, user_id: str) -> list[Device]:
    return list(db.scalars(select(Device).where(Device.user_id == user_id).order_by(Device.created_at)))


def revoke(db: Session, user: User, device_id: str, by: str) -> Device:
    device = db.get(Device, device_id)
    if device is None or device.user_id != user.id:
        raise NotFound(f"device {device_id} not found")
    if device.revoked_at is None:
        device.revoked_at = utcnow()
    ended = revoke_device_sessions(db, device.id, "device_revoked")
    record(
        db,
        "device_revoked",
        SUCCESS,
        network_id=user.network_id,
        user_id=user.id,
        device_id=device.id,
        by=by,
        sessions_ended=ended,
    )
    return device
