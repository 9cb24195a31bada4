"""Verifying access tokens: one routine for both services, so the rules cannot drift apart.

Only ES256 is accepted — ``alg: none``, HMAC (including the classic "public key as HMAC secret" confusion) and
every other algorithm are refused before any key is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from services.kit.errors import Unauthorized

ACCEPTED_ALGORITHMS = ("ES256",)


class InvalidToken(Unauthorized):
    code = "invalid_token"


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the token says."""

    kind: str  # "user" or "system"
    subject: str
    network: str
    organization: str
    profession: str | None
    scopes: list[str]
    session: str | None
    device: str | None
    claims: dict[str, Any] = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and "admin" in self.scopes

    @property
    def is_org_admin(self) -> bool:
        """Administrator of ``organization`` only (scope ``org-admin``); a network administrator is not one by
        virtue of that alone."""
        return self.kind == "user" and "org-admin" in self.scopes


def unverified_kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("token is not a well-formed JWT") from None
    if header.get("alg") not in ACCEPTED_ALGORITHMS:
        raise InvalidToken("token algorithm is not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("token has no key id")
    return kid


def verify(token: str, key: Any, *, issuer: str, audience: str, leeway: int = 0) -> Principal:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(ACCEPTED_ALGORITHMS),
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token has expired") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("token audience is wrong") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("token issuer is wrong") from None
    except jwt.PyJWTError:
        raise InvalidToken("token signature or claims are invalid") from None
    try:
        return Principal(
            kind=str(claims["kind"]),
            subject=str(claims["sub"]),
            network=str(claims["net"]),
            organization=str(claims["org"]),
            profession=claims.get("prof"),
            scopes=str(claims.get("scope", "")).split(),
            session=claims.get("sid"),
            device=claims.get("did"),
            claims=claims,
        )
    except KeyError as missing:
        raise InvalidToken(f"token lacks the {missing.args[0]} claim") from None


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("a Bearer token is required", code="invalid_request")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be 'Bearer <token>'", code="invalid_request")
    return token.strip()


def challenge_header(error: Unauthorized) -> dict[str, str]:
    """RFC 6750 WWW-Authenticate for a refused bearer token."""
    if error.code == "invalid_request":
        return {"WWW-Authenticate": 'Bearer realm="renkei"'}
    description = error.message.replace('"', "'")
    return {"WWW-Authenticate": f'Bearer realm="renkei", error="invalid_token", error_description="{description}"'}


def keys_from_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """Verification keys by kid; only EC keys can verify ES256, so nothing else is kept."""
    return {
        jwk["kid"]: jwt.PyJWK(jwk, algorithm="ES256").key
        for jwk in jwks.get("keys", [])
        if jwk.get("kid") and jwk.get("kty") == "EC"
    }
