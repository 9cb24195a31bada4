"""Network administration: settings, organisations, users, devices, system clients, the security log.

An administrator acts only inside their own network; ids from another network answer 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.auth.audit.recorder import SUCCESS, list_events, record
from services.auth.clients.models import SystemClient
from services.auth.deps import Context, CurrentAdmin, DbSession
from services.auth.directory.models import Organization, User
from services.auth.directory.schemas import (
    ClientIn,
    ClientOut,
    NetworkSettings,
    NetworkSettingsPatch,
    OrganizationIn,
    OrganizationOut,
    UserIn,
    UserOut,
    UserPatch,
)
from services.auth.directory.service import Directory
from services.auth.sessions import devices
from services.auth.sessions.endpoints import device_out
from services.auth.sessions.schemas import DeviceOut
from services.kit.errors import Conflict

router = APIRouter(prefix="/admin")


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        name=user.name,
        organization=user.organization_id,
        profession=user.profession,
        admin=user.is_admin,
        org_admin=user.org_admin,
        disabled=user.disabled,
        mfa_enabled=user.totp_enabled,
    )


def org_out(org: Organization) -> OrganizationOut:
    return OrganizationOut(id=org.id, name=org.name, type=org.type)


def client_out(client: SystemClient) -> ClientOut:
    return ClientOut(
        client_id=client.client_id,
        organization=client.organization_id,
        scope=client.scope,
        disabled=client.disabled,
        kids=[str(k.get("kid", "")) for k in client.jwks.get("keys", [])],
    )


@router.get("/network")
def get_network(ctx: Context, db: DbSession, admin: CurrentAdmin) -> dict[str, Any]:
    directory = Directory(ctx)
    network = directory.network(db, admin[1].network_id)
    return {
        "id": network.id,
        "name": network.name,
        "settings": directory.settings_of(db, network.id).model_dump(),
    }


@router.patch("/network/settings")
def patch_settings(body: NetworkSettingsPatch, ctx: Context, db: DbSession, admin: CurrentAdmin) -> NetworkSettings:
    settings = Directory(ctx).patch_settings(db, admin[1].network_id, body)
    record(
        db,
        "network_settings_changed",
        SUCCESS,
        network_id=admin[1].network_id,
        user_id=admin[1].id,
        settings=settings.model_dump(),
    )
    return settings


@router.get("/organizations")
def list_organizations(ctx: Context, db: DbSession, admin: CurrentAdmin) -> list[OrganizationOut]:
    return [org_out(o) for o in Directory(ctx).organizations(db, admin[1].network_id)]


@router.post("/organizations", status_code=201)
def create_organization(body: OrganizationIn, ctx: Context, db: DbSession, admin: CurrentAdmin) -> OrganizationOut:
    directory = Directory(ctx)
    if body.id and db.get(Organization, body.id) is not None:
        raise Conflict(f"organization {body.id} already exists")
    org_id, _ = directory.upsert_organization(db, admin[1].network_id, body)
    return org_out(directory.organization(db, admin[1].network_id, org_id))


@router.get("/users")
def list_users(ctx: Context, db: DbSession, admin: CurrentAdmin, organization: str | None = None) -> list[UserOut]:
    return [user_out(u) for u in Directory(ctx).users(db, admin[1].network_id, organization)]


@router.post("/users", status_code=201)
def create_user(body: UserIn, ctx: Context, db: DbSession, admin: CurrentAdmin) -> UserOut:
    directory = Directory(ctx)
    if db.query(User).filter(User.username == body.username).first() is not None:
        raise Conflict(f"username {body.username} is taken")
    user, _ = directory.upsert_user(db, admin[1].network_id, body)
    record(db, "user_created", SUCCESS, network_id=user.network_id, user_id=admin[1].id, target=user.id)
    return user_out(user)


@router.get("/users/{user_id}")
def get_user(user_id: str, ctx: Context, db: DbSession, admin: CurrentAdmin) -> UserOut:
    return user_out(Directory(ctx).user(db, admin[1].network_id, user_id))


@router.patch("/users/{user_id}")
def patch_user(user_id: str, body: UserPatch, ctx: Context, db: DbSession, admin: CurrentAdmin) -> UserOut:
    user = Directory(ctx).patch_user(db, admin[1].network_id, user_id, body)
    record(
        db,
        "user_changed",
        SUCCESS,
        network_id=user.network_id,
        user_id=admin[1].id,
        target=user.id,
        fields=sorted(body.model_dump(exclude_none=True)),
    )
    return user_out(user)


@router.post("/users/{user_id}/reset-mfa")
def reset_mfa(user_id: str, ctx: Context, db: DbSession, admin: CurrentAdmin) -> UserOut:
    user = Directory(ctx).reset_mfa(db, admin[1].network_id, user_id)
    record(db, "mfa_reset", SUCCESS, network_id=user.network_id, user_id=admin[1].id, target=user.id)
    return user_out(user)


@router.get("/users/{user_id}/devices")
def user_devices(user_id: str, ctx: Context, db: DbSession, admin: CurrentAdmin) -> list[DeviceOut]:
    user = Directory(ctx).user(db, admin[1].network_id, user_id)
    return [device_out(d) for d in devices.devices_of(db, user.id)]


@router.delete("/users/{user_id}/devices/{device_id}")
def revoke_device(user_id: str, device_id: str, ctx: Context, db: DbSession, admin: CurrentAdmin) -> DeviceOut:
    """A lost tablet: every session on it ends now; its access tokens lapse within their lifetime."""
    user = Directory(ctx).user(db, admin[1].network_id, user_id)
    return device_out(devices.revoke(db, user, device_id, by=f"admin:{admin[1].id}"))


@router.get("/clients")
def list_clients(ctx: Context, db: DbSession, admin: CurrentAdmin) -> list[ClientOut]:
    return [client_out(c) for c in Directory(ctx).clients(db, admin[1].network_id)]


@router.put("/clients/{client_id}")
def put_client(client_id: str, body: ClientIn, ctx: Context, db: DbSession, admin: CurrentAdmin) -> ClientOut:
    directory = Directory(ctx)
    if body.client_id != client_id:
        raise Conflict("client_id in the body differs from the path")
    directory.upsert_client(db, admin[1].network_id, body)
    record(
        db,
        "client_registered",
        SUCCESS,
        network_id=admin[1].network_id,
        user_id=admin[1].id,
        client_id=client_id,
    )
    return client_out(directory.client(db, admin[1].network_id, client_id))


@router.delete("/clients/{client_id}")
def disable_client(client_id: str, ctx: Context, db: DbSession, admin: CurrentAdmin) -> ClientOut:
    client = Directory(ctx).client(db, admin[1].network_id, client_id)
    client.disabled = True
    record(
        db,
        "client_disabled",
        SUCCESS,
        network_id=admin[1].network_id,
        user_id=admin[1].id,
        client_id=client_id,
    )
    return client_out(client)


@router.get("/security-events")
def security_events(
    db: DbSession, admin: CurrentAdmin, type: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    events = list_events(db, admin[1].network_id, type=type, limit=max(1, min(limit, 1000)))
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "type": e.type,
            "outcome": e.outcome,
            "user": e.user_id,
            "client": e.client_id,
            "session": e.session_id,
            "device": e.device_id,
            "address": e.address,
            "detail": e.detail,
        }
        for e in events
    ]
