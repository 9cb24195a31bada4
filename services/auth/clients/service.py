"""SMART Backend Services: ``client_credentials`` with a ``private_key_jwt`` client assertion."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.auth.audit.recorder import FAILURE, SUCCESS, record
from services.auth.clients.keys import ALLOWED_ALGORITHMS
from services.auth.clients.models import SystemClient, UsedAssertion
from services.auth.context import AuthContext
from services.kit import scopes
from services.kit.errors import BadRequest, Unauthorized

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class InvalidClient(Unauthorized):
    code = "invalid_client"


class InvalidScope(BadRequest):
    code = "invalid_scope"


def _record_refusal(db: Session, client: SystemClient, address: str, reason: str) -> None:
    record(db, "client_token", FAILURE, network_id=client.network_id, client_id=client.client_id, address=address,
           reason=reason)


class ClientCredentials:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    def token(
        self, db: Session, assertion_type: str | None, assertion: str | None, scope: str | None, address: str
    ) -> dict[str, Any]:
        if assertion_type != ASSERTION_TYPE or not assertion:
            raise InvalidClient(f"client_assertion_type must be {ASSERTION_TYPE} with a client_assertion")
        client = self._verify_assertion(db, assertion, address)
        registered = scopes.split(client.scope)
        requested = scopes.split(scope) or registered
        granted = scopes.intersect(requested, registered)
        if not granted:
            _record_refusal(db, client, address, "no_scope_granted")
            raise InvalidScope("none of the requested scopes is registered for this client", keep_writes=True)
        token, lifetime = self.ctx.signer.issue(
            db,
            {
                "sub": client.client_id,
                "kind": "system",
                "client_id": client.client_id,
                "net": client.network_id,
                "org": client.organization_id,
                "scope": " ".join(granted),
            },
        )
        record(
            db,
            "client_token",
            SUCCESS,
            network_id=client.network_id,
            client_id=client.client_id,
            address=address,
            scope=" ".join(granted),
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(granted),
        }

    def _verify_assertion(self, db: Session, assertion: str, address: str) -> SystemClient:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise InvalidClient("client_assertion is not a JWT") from None
        client_id = unverified.get("iss")
        client = db.get(SystemClient, client_id) if isinstance(client_id, str) else None
        if client is None or client.disabled:
            record(
                db,
                "client_token",
                FAILURE,
                client_id=str(client_id)[:200],
                address=address,
                reason="unknown_client",
            )
            raise InvalidClient("unknown or disabled client", keep_writes=True)

        def fail(reason: str) -> InvalidClient:
            _record_refusal(db, client, address, reason)
            return InvalidClient(f"client assertion rejected: {reason.replace('_', ' ')}", keep_writes=True)

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise fail("algorithm_not_allowed")
        claims = self._decode(assertion, client, header, alg)
        if claims is None:
            raise fail("bad_signature_or_claims")
        if claims.get("sub") != client.client_id:
            raise fail("sub_must_equal_iss")
        max_life = self.ctx.settings.client_assertion_max_lifetime_seconds + self.ctx.settings.clock_skew_seconds
        if int(claims["exp"]) - time.time() > max_life:
            raise fail("exp_too_far_ahead")
        if not self._first_use(db, client.client_id, str(claims["jti"]), int(claims["exp"])):
            raise fail("jti_replayed")
        return client

    def _decode(self, assertion: str, client: SystemClient, header: dict[str, Any], alg: str) -> dict[str, Any] | None:
        kid = header.get("kid")
        for jwk in client.jwks.get("keys", []):
            if kid is not None and jwk.get("kid") != kid:
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
                return dict(
                    jwt.decode(
                        assertion,
                        key,
                        algorithms=[alg],
                        audience=self.ctx.settings.token_endpoint,
                        issuer=client.client_id,
                        leeway=self.ctx.settings.clock_skew_seconds,
                        options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                    )
                )
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
        return None

    def _first_use(self, db: Session, client_id: str, jti: str, exp: int) -> bool:
        # A jti is forgotten only once its assertion could no longer pass, even with clock-skew leeway.
        horizon = datetime.now(UTC) - timedelta(seconds=self.ctx.settings.clock_skew_seconds + 60)
        db.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < horizon))
        try:
            with db.begin_nested():
                db.add(
                    UsedAssertion(
                        id=uuid.uuid4().hex,
                        client_id=client_id,
                        jti=jti[:255],
                        expires_at=datetime.fromtimestamp(exp, UTC),
                    )
                )
        except IntegrityError:
            return False
        return True
