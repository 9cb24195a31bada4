"""Registering a browser for Web Push (docs/push-protocol.md, "Web Push"):

- ``GET    /push/vapid-public-key``: the application server key to pass to ``PushManager.subscribe``.
- ``POST   /push/devices``: the browser's ``PushSubscription.toJSON()``; registers it for the caller (201).
- ``DELETE /push/devices?endpoint=…``: the caller's own registration of that endpoint goes (204).

Users only (a system client has no pocket to wake). The endpoint is a URL this server will call, so it must be a
public https address (services/kit/outbound.py); the keys are checked here so that a bad one is refused to the
browser that sent it rather than failing silently at the first urgent message.
"""

from __future__ import annotations

import asyncio
import binascii

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Forbidden, NotFound
from services.kit.outbound import checked_endpoint
from services.kit.tokens import Principal
from services.share.fhir.resources import in_transaction
from services.share.push import devices
from services.share.push.webpush import VapidKey, b64url_decode
from services.share.security.deps import Context, CurrentPrincipal

router = APIRouter(prefix="/push", tags=["push"])

POINT_BYTES = 65  # an uncompressed P-256 point (RFC 8291 §3.2: p256dh)
AUTH_BYTES = 16  # the authentication secret (RFC 8291 §3.2: auth)
ENDPOINT_CHARACTERS = 1000


class SubscriptionKeys(BaseModel):
    p256dh: str
    auth: str


class Subscription(BaseModel):
    """A browser's PushSubscription as JSON (``expirationTime`` and anything else are ignored)."""

    endpoint: str
    keys: SubscriptionKeys


@router.get("/vapid-public-key", summary="The application server key for PushManager.subscribe")
async def vapid_public_key(request: Request, principal: CurrentPrincipal) -> Response:
    _user(principal)
    vapid: VapidKey = request.app.state.vapid
    return JSONResponse({"public_key": vapid.application_server_key})


@router.post("/devices", status_code=201, summary="Register this browser for Web Push wake-ups")
async def register_device(subscription: Subscription, ctx: Context, principal: CurrentPrincipal) -> Response:
    user = _user(principal)
    endpoint = await asyncio.to_thread(_endpoint, subscription.endpoint, ctx.settings.outbound_allow_loopback)
    p256dh, auth = _keys(subscription.keys)

    def work(db: Session) -> Response:
        devices.register(db, principal.network, user, endpoint, p256dh, auth)
        return Response(status_code=201)

    return await in_transaction(ctx, work)


@router.delete("/devices", status_code=204, summary="Stop Web Push wake-ups to this browser")
async def unregister_device(ctx: Context, principal: CurrentPrincipal,
                            endpoint: str = Query(max_length=ENDPOINT_CHARACTERS)) -> Response:
    user = _user(principal)

    def work(db: Session) -> Response:
        if not devices.unregister(db, principal.network, user, endpoint):
            raise NotFound("no device of yours is registered with this endpoint", code="device_not_found")
        return Response(status_code=204)

    return await in_transaction(ctx, work)


def _user(principal: Principal) -> str:
    if principal.kind != "user":
        raise Forbidden("Web Push wakes a user's browser; system clients have none", code="not_a_user")
    return principal.subject


def _endpoint(endpoint: str, allow_loopback: bool) -> str:
    if len(endpoint) > ENDPOINT_CHARACTERS:
        raise BadRequest(f"the endpoint is longer than {ENDPOINT_CHARACTERS} characters", code="endpoint_refused")
    return checked_endpoint(endpoint, allow_loopback=allow_loopback)


def _keys(keys: SubscriptionKeys) -> tuple[str, str]:
    """The keys in unpadded base64url, if they are a P-256 point and a 16-byte secret."""
    point = _decoded(keys.p256dh, "keys.p256dh")
    if len(point) != POINT_BYTES:
        raise BadRequest(f"keys.p256dh must be a {POINT_BYTES}-byte uncompressed P-256 point in base64url "
                         f"(got {len(point)} bytes)", code="invalid_subscription")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise BadRequest("keys.p256dh is not a point on the P-256 curve", code="invalid_subscription") from None
    secret = _decoded(keys.auth, "keys.auth")
    if len(secret) != AUTH_BYTES:
        raise BadRequest(f"keys.auth must be {AUTH_BYTES} bytes in base64url (got {len(secret)} bytes)",
                         code="invalid_subscription")
    return keys.p256dh.rstrip("="), keys.auth.rstrip("=")


def _decoded(value: str, name: str) -> bytes:
    try:
        return b64url_decode(value)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not base64url", code="invalid_subscription") from None
