"""Login, second factor, the OAuth2 token endpoint, logout, the caller's own devices."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Response
from sqlalchemy import select

from services.auth.audit.recorder import SUCCESS, record
from services.auth.clients.service import ClientCredentials
from services.auth.deps import Address, Context, CurrentUser, DbSession, authenticate_user
from services.auth.directory.models import User
from services.auth.sessions import devices
from services.auth.sessions.login import LoginService
from services.auth.sessions.models import LoginSession, RefreshToken
from services.auth.sessions.revocation import revoke_session
from services.auth.sessions.schemas import CodeIn, DeviceIn, DeviceOut, EnrolIn, LoginIn, LogoutIn, MfaIn
from services.kit.errors import BadRequest, Unauthorized
from services.kit.secrets import sha256_hex

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post("/login")
def login(body: LoginIn, ctx: Context, db: DbSession, address: Address, response: Response) -> dict[str, Any]:
    response.headers.update(NO_STORE)
    return LoginService(ctx).login(db, body.username, body.password, address, body.device_id)


@router.post("/login/mfa")
def login_mfa(body: MfaIn, ctx: Context, db: DbSession, address: Address, response: Response) -> dict[str, Any]:
    response.headers.update(NO_STORE)
    return LoginService(ctx).complete(db, body.mfa_token, body.code, address)


@router.post("/token")
def token(
    ctx: Context,
    db: DbSession,
    address: Address,
    response: Response,
    grant_type: Annotated[str, Form()],
    refresh_token: Annotated[str | None, Form()] = None,
    client_assertion_type: Annotated[str | None, Form()] = None,
    client_assertion: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """OAuth2 token endpoint: ``refresh_token`` for user sessions, ``client_credentials`` for system clients."""
    response.headers.update(NO_STORE)
    if grant_type == "refresh_token":
        if not refresh_token:
            raise BadRequest("refresh_token is required")
        return LoginService(ctx).tokens.refresh(db, refresh_token, address)
    if grant_type == "client_credentials":
        return ClientCredentials(ctx).token(db, client_assertion_type, client_assertion, scope, address)
    raise BadRequest(f"grant_type {grant_type!r} is not supported", code="unsupported_grant_type")


@router.post("/logout", status_code=204)
def logout(
    ctx: Context,
    db: DbSession,
    address: Address,
    body: LogoutIn | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """End the session named by the bearer token or by a refresh token (either is enough)."""
    session: LoginSession | None = None
    if body is not None and body.refresh_token:
        row = db.get(RefreshToken, sha256_hex(body.refresh_token))
        session = db.get(LoginSession, row.session_id) if row else None
    elif authorization:
        principal, _ = authenticate_user(ctx, db, authorization)
        session = db.get(LoginSession, principal.session) if principal.session else None
    if session is None:
        raise Unauthorized("give a bearer token or a refresh_token to log out", code="invalid_request")
    revoke_session(db, session, "logout")
    user = db.get(User, session.user_id)
    record(
        db,
        "logout",
        SUCCESS,
        network_id=user.network_id if user else None,
        user_id=session.user_id,
        session_id=session.id,
        device_id=session.device_id,
        address=address,
    )
    return Response(status_code=204)


@router.get("/me")
def me(caller: CurrentUser, db: DbSession) -> dict[str, Any]:
    principal, user = caller
    return {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "network": user.network_id,
        "organization": user.organization_id,
        "profession": user.profession,
        "admin": user.is_admin,
        "org_admin": user.org_admin,
        "mfa_enabled": user.totp_enabled,
        "session": principal.session,
        "device": principal.device,
    }


# Second factor -------------------------------------------------------------------------------------------


@router.post("/mfa/totp/enroll")
def enrol_totp(
    ctx: Context,
    db: DbSession,
    body: EnrolIn | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, str]:
    """Start TOTP enrolment, with the enrolment ``mfa_token`` from login or as a logged-in user."""
    service = LoginService(ctx)
    if body is not None and body.mfa_token:
        challenge = service.challenge(db, body.mfa_token, purpose="enroll")
        user = db.get(User, challenge.user_id)
    else:
        user = authenticate_user(ctx, db, authorization)[1]
    assert user is not None
    return service.second_factor.begin_enrolment(user)


@router.post("/mfa/totp/confirm")
def confirm_totp(body: CodeIn, ctx: Context, db: DbSession, caller: CurrentUser) -> dict[str, Any]:
    """Finish enrolment for a logged-in user; the answer holds recovery codes, shown this once."""
    _, user = caller
    codes = LoginService(ctx).second_factor.confirm_enrolment(db, user, body.code)
    if codes is None:
        raise BadRequest("the code does not match the pending secret (or nothing is pending)", code="invalid_code")
    record(db, "mfa_enrolled", SUCCESS, network_id=user.network_id, user_id=user.id)
    return {"mfa_enabled": True, "recovery_codes": codes}


@router.post("/mfa/recovery-codes")
def regenerate_recovery_codes(body: CodeIn, ctx: Context, db: DbSession, caller: CurrentUser) -> dict[str, Any]:
    """New recovery codes replace the old ones; a current code proves it is the user asking."""
    _, user = caller
    second_factor = LoginService(ctx).second_factor
    if second_factor.verify(db, user, body.code) != "totp":
        raise BadRequest("a current authenticator code is required", code="invalid_code")
    record(db, "recovery_codes_regenerated", SUCCESS, network_id=user.network_id, user_id=user.id)
    return {"recovery_codes": second_factor.new_recovery_codes(db, user)}


# Devices -------------------------------------------------------------------------------------------------


def device_out(device: Any) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        name=device.name,
        created_at=device.created_at.isoformat(),
        revoked=device.revoked_at is not None,
    )


@router.post("/devices", status_code=201)
def register_device(body: DeviceIn, db: DbSession, caller: CurrentUser) -> DeviceOut:
    """Register the calling tablet; the current session becomes the device's, and later logins name it."""
    principal, user = caller
    return device_out(devices.register(db, user, body.name, principal.session))


@router.get("/devices")
def my_devices(db: DbSession, caller: CurrentUser) -> list[DeviceOut]:
    return [device_out(d) for d in devices.devices_of(db, caller[1].id)]


@router.delete("/devices/{device_id}")
def revoke_my_device(device_id: str, db: DbSession, caller: CurrentUser) -> DeviceOut:
    return device_out(devices.revoke(db, caller[1], device_id, by="user"))


@router.get("/sessions")
def my_sessions(db: DbSession, caller: CurrentUser) -> list[dict[str, Any]]:
    query = select(LoginSession).where(LoginSession.user_id == caller[1].id, LoginSession.revoked_at.is_(None))
    return [
        {"id": s.id, "device": s.device_id, "created_at": s.created_at.isoformat()}
        for s in db.scalars(query.order_by(LoginSession.created_at))
    ]
