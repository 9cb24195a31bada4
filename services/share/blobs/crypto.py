"""Streaming encryption of attachment content under its patient's data key: chunked AES-256-GCM.

A blob is a header followed by sealed chunks, so a 20 MB photo is encrypted and decrypted piece by piece and
each piece is authenticated before it is released::

    header = format (1) | chunk size (4, big-endian) | salt (16) | nonce prefix (8)
    chunk i = AES-256-GCM(subkey, nonce = prefix | i (4, big-endian), plaintext chunk i, aad_i)  (+16-byte tag)
    aad_i  = header | "renkei:blob:v1:" blob id | i (8, big-endian) | final flag (1)

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds 0 to ``chunk size`` and is
sealed with the final flag set. So an altered byte fails its chunk's tag, swapped chunks fail (the index is in
the nonce and the associated data), a cut after any chunk fails (that chunk was not sealed as final), and bytes
appended after the final chunk fail (it is then opened as non-final). The header is in every chunk's associated
data, so it cannot be altered either.

The data key is never used directly: each blob gets its own subkey, HKDF-SHA256(data key, salt, blob id), which
keeps blob nonces apart from the nonces of resource bodies sealed under the same data key, binds the blob to its
id (a file moved to another id fails to open), and keeps any one key far below AES-GCM's usage limits.
Destroying the patient's data key (crypto-shredding) makes the patient's blobs unreadable with it.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 1
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = struct.Struct(">BI16s8s")  # format, chunk size, salt, nonce prefix
HEADER_BYTES = _HEADER.size
_MAX_CHUNK = 16 * 1024 * 1024
_MAX_CHUNKS = 2**32  # the counter's width in the nonce
_CONTEXT = b"renkei:blob:v1:"


class TamperedBlob(Exception):
    """The blob does not authenticate: altered, truncated, reordered, extended, moved, or the wrong key."""


def encrypt(key: bytes, blob_id: str, chunks: Iterable[bytes], chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The sealed blob for the concatenation of ``chunks`` (any sizes), yielded header first, chunk by chunk."""
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise ValueError(f"chunk size must be between 1 and {_MAX_CHUNK} bytes")
    header = _HEADER.pack(FORMAT_V1, chunk_size, secrets.token_bytes(16), secrets.token_bytes(8))
    aead, prefix = _cipher(key, blob_id, header)
    yield header
    index = 0
    carry = b""  # fewer than chunk_size + 1 bytes not yet sealed
    for piece in chunks:
        if not piece:
            continue
        data = carry + piece if carry else piece
        view = memoryview(data)
        offset = 0
        # Seal a chunk only once more bytes follow it: the last chunk must carry the final flag.
        while len(data) - offset > chunk_size:
            yield _seal(aead, prefix, header, blob_id, index, view[offset:offset + chunk_size], final=False)
            offset += chunk_size
            index += 1
        carry = bytes(view[offset:])
        view.release()
    yield _seal(aead, prefix, header, blob_id, index, carry, final=True)


def decrypt(key: bytes, blob_id: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext of a blob made by :func:`encrypt`, chunk by chunk; raises :class:`TamperedBlob`.

    Each chunk is yielded only after it authenticated. A cut or extended blob is detected at its end, so a
    caller that must not release any byte of a damaged blob reads it through once first (see ``verify``).
    """
    source = iter(chunks)
    buffer = bytearray()
    for piece in source:
        buffer += piece
        if len(buffer) >= HEADER_BYTES:
            break
    if len(buffer) < HEADER_BYTES:
        raise TamperedBlob("blob is shorter than its header")
    header = bytes(buffer[:HEADER_BYTES])
    version, chunk_size, _salt, _prefix = _HEADER.unpack(header)
    if version != FORMAT_V1 or not 1 <= chunk_size <= _MAX_CHUNK:
        raise TamperedBlob("blob has an unknown format")
    aead, prefix = _cipher(key, blob_id, header)
    frame = chunk_size + TAG_BYTES
    del buffer[:HEADER_BYTES]
    index = 0
    while True:
        offset = 0
        while len(buffer) - offset > frame:
            yield _open(aead, prefix, header, blob_id, index, bytes(buffer[offset:offset + frame]), final=False)
            offset += frame
            index += 1
        del buffer[:offset]
        more = next(source, None)
        if more is None:
            break
        buffer += more
    if len(buffer) < TAG_BYTES:
        raise TamperedBlob("blob is truncated")
    last = _open(aead, prefix, header, blob_id, index, bytes(buffer), final=True)
    if last:
        yield last


def verify(key: bytes, blob_id: str, chunks: Iterable[bytes]) -> int:
    """Authenticate a whole blob without keeping it; returns its plaintext size or raises :class:`TamperedBlob`."""
    return sum(len(chunk) for chunk in decrypt(key, blob_id, chunks))


def encrypted_size(size: int, chunk_size: int = CHUNK_BYTES) -> int:
    """The stored size of a ``size``-byte plaintext."""
    chunks = max(1, -(-size // chunk_size))
    return HEADER_BYTES + size + chunks * TAG_BYTES


def _cipher(key: bytes, blob_id: str, header: bytes) -> tuple[AESGCM, bytes]:
    if len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM needs a 32-byte key")
    _version, _chunk, salt, prefix = _HEADER.unpack(header)
    subkey = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt,
                  info=_CONTEXT + blob_id.encode()).derive(key)
    return AESGCM(subkey), prefix


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= _MAX_CHUNKS:
        raise ValueError("blob has too many chunks for its nonce counter")
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, blob_id: str, index: int, final: bool) -> bytes:
    # The header has a fixed length and the index and flag too, so the blob id between them is unambiguous.
    return header + _CONTEXT + blob_id.encode() + struct.pack(">QB", index, 1 if final else 0)


def _seal(aead: AESGCM, prefix: bytes, header: bytes, blob_id: str, index: int, plaintext: bytes | memoryview,
          *, final: bool) -> bytes:
    return aead.encrypt(_nonce(prefix, index), plaintext, _aad(header, blob_id, index, final))


def _open(aead: AESGCM, prefix: bytes, header: bytes, blob_id: str, index: int, sealed: bytes,
          *, final: bool) -> bytes:
    if index >= _MAX_CHUNKS:
        raise TamperedBlob("blob has more chunks than any blob can")
    try:
        return aead.decrypt(_nonce(prefix, index), sealed, _aad(header, blob_id, index, final))
    except InvalidTag:
        raise TamperedBlob(f"blob chunk {index} does not authenticate") from None
