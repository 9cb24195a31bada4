"""Sending one Web Push message (RFC 8030) to a browser: encrypted to it (RFC 8291), signed as us (RFC 8292).

The message only wakes: a fixed sentence and, at most, the event's sequence number — never a patient, a name or a
message text. A push service (Google's, Mozilla's, Apple's) is a third party that sees whatever reaches it, and a
phone shows a notification on a locked screen; the app reads the news itself, over its authenticated connection.

The key that signs (VAPID) is this deployment's identity towards push services: browsers subscribe with its
public half (``GET /push/vapid-public-key``), and a new key would orphan every subscription. Embedded default: a
file ``<key_dir>/vapid-private.pem`` (mode 0600) made on first use, like the other keys; production may pass it in
``RENKEI_VAPID_PRIVATE_KEY``. The encryption (http_ece) and the signature (py_vapid) are those libraries', not ours.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

import http_ece
import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from services.kit.settings import Settings
from services.share.push.devices import Target

VAPID_FILE = "vapid-private.pem"
TOKEN_SECONDS = 12 * 3600  # a VAPID token's lifetime: RFC 8292 §2 allows at most 24 hours
WAKE_MESSAGE = "新しい至急の連絡があります。アプリを開いてください / Something urgent needs you — open the app"


class Outcome(Enum):
    DELIVERED = "delivered"  # the push service accepted it (2xx)
    GONE = "gone"  # 404/410: the subscription has expired or been withdrawn
    FAILED = "failed"  # anything else: the push service refused, timed out or could not be reached


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; binascii.Error (a ValueError) if it is not."""
    if not text or any(c not in _B64URL for c in text):
        raise binascii.Error("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


class VapidKey:
    """This deployment's VAPID key pair and contact (``sub``)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("the VAPID key must be a P-256 key")
        self._signer = Vapid02(private_key)
        self.subject = subject
        point = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
        self.application_server_key = b64url(point)  # what PushManager.subscribe takes

    @classmethod
    def load(cls, settings: Settings) -> VapidKey:
        if settings.vapid_private_key:
            key = _parsed(settings.vapid_private_key)
        else:
            key = _load_or_create(settings.resolved_key_dir / VAPID_FILE)
        return cls(key, settings.resolved_vapid_subject)

    def authorization(self, endpoint: str) -> str:
        """The ``Authorization: vapid t=…,k=…`` header for a request to ``endpoint``'s push service."""
        parts = urlsplit(endpoint)
        claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + TOKEN_SECONDS,
                  "sub": self.subject}
        header: str = self._signer.sign(claims)["Authorization"]
        return header


def _parsed(value: str) -> ec.EllipticCurvePrivateKey:
    """A PEM private key, or the raw 32-byte private value in base64url."""
    if value.lstrip().startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(value.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("RENKEI_VAPID_PRIVATE_KEY must be an EC P-256 private key")
        return key
    raw = b64url_decode(value.strip())
    if len(raw) != 32:
        raise ValueError("RENKEI_VAPID_PRIVATE_KEY must be a PEM or 32 bytes in base64url")
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def _load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return _parsed(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: two workers starting at once must end with one key, or half the subscriptions would not match.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load_or_create(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def wake_payload(seq: int) -> bytes:
    """The whole message a push service carries: no patient data (module docstring)."""
    return orjson.dumps({"type": "wake", "message": WAKE_MESSAGE, "seq": seq})


def encrypted(payload: bytes, target: Target) -> bytes:
    """RFC 8291 aes128gcm: a fresh ECDH key per message, agreed with the browser's key and its auth secret."""
    body: bytes = http_ece.encrypt(payload, private_key=ec.generate_private_key(ec.SECP256R1()),
                                   dh=b64url_decode(target.p256dh), auth_secret=b64url_decode(target.auth),
                                   version="aes128gcm")
    return body


async def send(client: httpx.AsyncClient, vapid: VapidKey, target: Target, payload: bytes, ttl: int) -> Outcome:
    """POST one message to the device's push service; redirects are not followed (the endpoint was checked, the
    place it redirects to was not)."""
    headers = {"TTL": str(ttl), "Urgency": "high", "Content-Encoding": "aes128gcm",
               "Content-Type": "application/octet-stream", "Authorization": vapid.authorization(target.endpoint)}
    try:
        answer = await client.post(target.endpoint, content=encrypted(payload, target), headers=headers,
                                   follow_redirects=False)
    except (httpx.HTTPError, ValueError):
        return Outcome.FAILED
    if answer.status_code in (404, 410):
        return Outcome.GONE
    return Outcome.DELIVERED if 200 <= answer.status_code < 300 else Outcome.FAILED
