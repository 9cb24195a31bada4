"""The demo network: a fictitious region for trying Renkei on a laptop. Never for real patients.

``deploy/demo/network.json`` holds the organisations and users (with fixed, published TOTP secrets so a newcomer
can compute codes). The demo hospital's system-client key pair is generated on first use into the data
directory, and its public half is registered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.kit.settings import REPO_ROOT, Settings

DEMO_FILE = REPO_ROOT / "deploy" / "demo" / "network.json"
DEMO_CLIENT = "demo-hospital-ehr"


def client_key_path(settings: Settings) -> Path:
    return settings.data_dir / "demo" / f"{DEMO_CLIENT}.key.pem"


def _client_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    path = client_key_path(settings)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key
    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def demo_network(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(DEMO_FILE.read_bytes())
    public_jwk = dict(jwt.algorithms.ECAlgorithm.to_jwk(_client_key(settings).public_key(), as_dict=True))
    public_jwk.update({"kid": "demo-hospital-ehr-1", "alg": "ES384", "use": "sig"})
    for client in data["clients"]:
        if client["client_id"] == DEMO_CLIENT:
            client["jwks"] = {"keys": [public_jwk]}
    return data


def totp_secret(username: str) -> str | None:
    data = orjson.loads(DEMO_FILE.read_bytes())
    return next((u.get("totp_secret") for u in data["users"] if u["username"] == username), None)


def client_assertion(settings: Settings, lifetime: int = 240) -> str:
    """A signed client assertion for the demo hospital client, for trying client_credentials with curl."""
    import time
    import uuid

    now = int(time.time())
    claims = {
        "iss": DEMO_CLIENT,
        "sub": DEMO_CLIENT,
        "aud": settings.token_endpoint,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, _client_key(settings), algorithm="ES384", headers={"kid": "demo-hospital-ehr-1"})
