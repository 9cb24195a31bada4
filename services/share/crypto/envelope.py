"""AES-256-GCM sealing with a format byte, for resource bodies and wrapped data keys.

Layout: ``format (1) | nonce (12) | ciphertext + tag``. The format byte lets a later scheme coexist with this one
without guessing. The associated data binds a ciphertext to where it belongs, so a body copied into another row
(another resource, another version) fails to open instead of being served as that row's content.
"""

from __future__ import annotations

import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_V1 = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_HEADER = 1 + NONCE_BYTES


class _Nonces:
    """Random nonces, drawn from the operating system 4 kB at a time and each byte handed out once.

    Every os.urandom call releases the interpreter lock; on a busy worker, taking it back cost more than the
    sealing itself (bench/access.py: an audit record per read). The bytes are the same CSPRNG output either way.
    A forked child starts with an empty pool, so no two processes ever share a nonce from it.
    """

    def __init__(self, pool_bytes: int = 4096) -> None:
        self._pool_bytes = pool_bytes
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._at + size > len(self._pool):
                self._pool, self._at = os.urandom(max(self._pool_bytes, size)), 0
            nonce = self._pool[self._at:self._at + size]
            self._at += size
            return nonce

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0


_nonces = _Nonces()


class TamperedCiphertext(Exception):
    """The blob does not authenticate under this key and associated data: altered, moved, or the wrong key."""


def seal(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` under ``key`` (32 bytes, or its :func:`sealer`), authenticating ``aad`` alongside it."""
    nonce = _nonces.take(NONCE_BYTES)
    return bytes([FORMAT_V1]) + nonce + _aead(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes | AESGCM, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a blob made by :func:`seal`; any mismatch raises :class:`TamperedCiphertext`, never garbage."""
    if len(blob) < _HEADER + 16 or blob[0] != FORMAT_V1:
        raise TamperedCiphertext("ciphertext is truncated or has an unknown format")
    try:
        return _aead(key).decrypt(blob[1:_HEADER], blob[_HEADER:], aad)
    except InvalidTag:
        raise TamperedCiphertext("ciphertext does not authenticate") from None


def resource_aad(resource_type: str, resource_id: str, version: int) -> bytes:
    """The associated data for one resource version, e.g. ``b"renkei:v1:Patient/123/_history/4"``.

    A ``/`` inside the type or id would make two different triples produce the same bytes, so it is refused.
    """
    if "/" in resource_type or "/" in resource_id:
        raise ValueError("resource type and id must not contain '/'")
    return f"renkei:v1:{resource_type}/{resource_id}/_history/{int(version)}".encode()


def sealer(key: bytes) -> AESGCM:
    """``key`` made into a cipher that :func:`seal` and :func:`open_sealed` take in its place. Building one costs,
    against a server's cold caches, about as much as sealing a sheet (11 against 14 µs), so a key in steady use is
    worth keeping as one (DataKeys.sealer); each holds about 2.5 kB of cipher state, so not every key is."""
    return _new_aead(key)


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else _new_aead(key)


def _new_aead(key: bytes) -> AESGCM:
    # AESGCM also accepts 16- and 24-byte keys; refusing them keeps a short key from silently meaning AES-128.
    if len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM needs a 32-byte key")
    return AESGCM(key)
