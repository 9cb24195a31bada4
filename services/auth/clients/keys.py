"""Checking the public keys a system client registers (SMART Backend Services: ES384 or RS384)."""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ALLOWED_ALGORITHMS = ("ES384", "RS384")


def check_jwks(jwks: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Raise ValueError unless every key is a usable public ES384/RS384 key; return the key ids."""
    keys = jwks.get("keys")
    if not keys:
        raise ValueError("jwks must hold at least one key")
    kids = []
    for index, jwk in enumerate(keys):
        if "d" in jwk or "p" in jwk:
            raise ValueError(f"jwks.keys[{index}] holds private key material; register the public key only")
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.exceptions.PyJWKError, jwt.exceptions.InvalidKeyError, ValueError, KeyError) as error:
            raise ValueError(f"jwks.keys[{index}] is not a valid JWK: {error}") from None
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name != "secp384r1":
                raise ValueError(f"jwks.keys[{index}]: EC keys must be P-384 (ES384)")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise ValueError(f"jwks.keys[{index}]: RSA keys must be at least 2048 bits")
        else:
            raise ValueError(f"jwks.keys[{index}]: only EC P-384 and RSA keys are accepted")
        if jwk.get("alg") and jwk["alg"] not in ALLOWED_ALGORITHMS:
            raise ValueError(f"jwks.keys[{index}]: alg must be one of {', '.join(ALLOWED_ALGORITHMS)}")
        kids.append(str(jwk.get("kid", "")))
    return kids
