"""Key files and authenticated encryption of small secrets.

Embedded default: a random key is generated on first start into the key directory with mode 0600. In production
the key comes from the environment (or a KMS plug-in that sets it) and no file is written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


def load_or_create_key(path: Path, env_value: str | None = None) -> bytes:
    """Return a 32-byte key from ``env_value`` (base64) or from ``path``, creating the file if it is missing."""
    if env_value:
        key = base64.b64decode(env_value)
        if len(key) != 32:
            raise ValueError("key material must be 32 bytes, base64-encoded")
        return key
    if path.exists():
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise ValueError(f"key file {path} does not hold 32 base64-encoded bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
    return key


class SecretBox:
    """AES-256-GCM with associated data, for secrets stored in a database column."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._mac_key = hashlib.sha256(b"renkei-mac\x00" + key).digest()

    def seal(self, plaintext: bytes, associated: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated.encode())

    def open(self, sealed: bytes, associated: str) -> bytes:
        return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated.encode())

    def mac(self, value: str) -> str:
        """A keyed hash, for high-entropy values that are looked up but never read back (recovery codes)."""
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
