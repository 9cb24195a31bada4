"""Signing keys and access tokens.

One key is active at a time. Rotation makes a new key active and retires the old one; a retired public key
stays in the JWKS until every token it signed has expired, so rotation never logs anyone out.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.signing.models import SigningKey
from services.kit.db import utcnow
from services.kit.secrets import SecretBox
from services.kit.settings import Settings

ALGORITHM = "ES256"


class Signer:
    def __init__(self, settings: Settings, box: SecretBox) -> None:
        self.settings = settings
        self.box = box
        self._private_keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._lock = threading.Lock()

    # Keys ---------------------------------------------------------------------------------------------

    def create_key(self, db: Session) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        kid = secrets.token_urlsafe(12)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        jwk: dict[str, Any] = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
        jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
        row = SigningKey(
            kid=kid,
            alg=ALGORITHM,
            private_key_sealed=self.box.seal(pem, f"signing-key:{kid}"),
            public_jwk=jwk,
            created_at=utcnow(),
        )
        db.add(row)
        db.flush()
        return row

    def ensure_key(self, db: Session) -> SigningKey:
        return self.active_key(db) or self.create_key(db)

    def active_key(self, db: Session) -> SigningKey | None:
        query = select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.created_at.desc())
        return db.scalars(query.limit(1)).first()

    def rotate(self, db: Session) -> SigningKey:
        now = utcnow()
        for key in db.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
            key.retired_at = now
        return self.create_key(db)

    def published_keys(self, db: Session, now: datetime | None = None) -> list[SigningKey]:
        now = now or utcnow()
        grace = timedelta(seconds=self.settings.access_token_ttl_seconds + self.settings.clock_skew_seconds)
        keys = db.scalars(select(SigningKey).order_by(SigningKey.created_at.desc()))
        return [k for k in keys if k.retired_at is None or k.retired_at + grace > now]

    def jwks(self, db: Session) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.published_keys(db)]}

    def purge_expired(self, db: Session) -> int:
        published = {k.kid for k in self.published_keys(db)}
        stale = [k for k in db.scalars(select(SigningKey)) if k.kid not in published]
        for key in stale:
            db.delete(key)
        return len(stale)

    # Tokens -------------------------------------------------------------------------------------------

    def issue(self, db: Session, claims: dict[str, Any]) -> tuple[str, int]:
        """Sign an access token carrying ``claims`` plus the registered ones; returns (token, lifetime)."""
        key = self.ensure_key(db)
        now = utcnow()
        lifetime = self.settings.access_token_ttl_seconds
        payload = {
            "iss": self.settings.issuer,
            "aud": self.settings.fhir_base,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(now.timestamp()) + lifetime,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        token = jwt.encode(
            payload, self._private_key(key), algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return token, lifetime

    def _private_key(self, key: SigningKey) -> ec.EllipticCurvePrivateKey:
        with self._lock:
            cached = self._private_keys.get(key.kid)
            if cached is None:
                pem = self.box.open(key.private_key_sealed, f"signing-key:{key.kid}")
                loaded = serialization.load_pem_private_key(pem, password=None)
                if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                    raise TypeError("signing key is not an EC key")
                cached = self._private_keys[key.kid] = loaded
            return cached
