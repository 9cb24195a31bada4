"""Versioned key-encryption keys (KEKs) and the blind-index key.

KEKs only wrap data keys, so rotating one means rewrapping a few bytes per patient, never re-encrypting bodies.
The highest version wraps new data keys; older versions stay readable until every data key has moved off them.
The blind-index key is separate and never rotates with the KEKs: a search token must not change when the KEK does.

Embedded default: files under the key directory, mode 0600, version 1 made on first use. Production passes the
keys in the environment (``RENKEI_SHARE_KEKS``, ``RENKEI_SHARE_INDEX_KEY``); rotation is then the deployment's job.

File-backed rings notice versions added by another process (``renkei keys rotate`` while the server runs): an
unknown version triggers a rescan, and the current version is rechecked whenever the key directory changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from services.kit.secrets import load_or_create_key
from services.kit.settings import Settings

KEK_FILE = re.compile(r"share-kek-([1-9][0-9]*)\.key")
VERSION = re.compile(r"[1-9][0-9]*")
INDEX_FILE = "share-index.key"
KEY_BYTES = 32


class UnknownKek(Exception):
    """A data key names a KEK version this process does not hold (retired too early, or a missing secret)."""


class KekRotationRefused(Exception):
    """Rotation was asked of a key ring that this process does not own (keys from the environment)."""


class KeyRing:
    def __init__(self, keks: Mapping[int, bytes], index_key: bytes, key_dir: Path | None = None) -> None:
        """``key_dir`` set means the KEKs are files there (rotatable, rescanned); None means fixed keys."""
        if not keks:
            raise ValueError("a key ring needs at least one key-encryption key")
        for key in (*keks.values(), index_key):
            _check_length(key, "key")
        self._keks = dict(keks)
        self.index_key = index_key
        self._key_dir = key_dir
        self._dir_stamp = _stamp(key_dir)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> KeyRing:
        key_dir = settings.resolved_key_dir
        if settings.share_keks:
            if not settings.share_index_key:
                # A generated index key in a container's throwaway filesystem would silently break every search
                # after a restart; with keys managed outside, the index key must be managed there too.
                raise ValueError("RENKEI_SHARE_INDEX_KEY must be set when RENKEI_SHARE_KEKS is")
            index_key = load_or_create_key(key_dir / INDEX_FILE, settings.share_index_key)
            return cls(_parse_keks(settings.share_keks), index_key)
        index_key = load_or_create_key(key_dir / INDEX_FILE, settings.share_index_key)
        keks = _scan(key_dir) or {1: load_or_create_key(key_dir / _kek_name(1))}
        return cls(keks, index_key, key_dir)

    @property
    def from_environment(self) -> bool:
        return self._key_dir is None

    @property
    def versions(self) -> list[int]:
        return sorted(self._keks)

    @property
    def current_version(self) -> int:
        """The version that wraps new data keys: the highest one, rechecked if the key directory changed."""
        if self._key_dir is not None and _stamp(self._key_dir) != self._dir_stamp:
            self._rescan()
        return max(self._keks)

    def key(self, version: int) -> bytes:
        key = self._keks.get(version)
        if key is None and self._key_dir is not None:
            self._rescan()
            key = self._keks.get(version)
        if key is None:
            raise UnknownKek(f"key-encryption key version {version} is not available (have {self.versions})")
        return key

    def rotate(self) -> int:
        """Create the next KEK version (file, mode 0600) and make it current; data keys still need rewrapping."""
        if self._key_dir is None:
            raise KekRotationRefused(
                "key-encryption keys come from the environment: add a version to RENKEI_SHARE_KEKS instead"
            )
        with self._lock:
            self._rescan_locked()
            version = max(self._keks) + 1
            # O_EXCL inside: a concurrent rotation to the same version ends with one file both processes read.
            load_or_create_key(self._key_dir / _kek_name(version))
            self._rescan_locked()
        return version

    def _rescan(self) -> None:
        with self._lock:
            self._rescan_locked()

    def _rescan_locked(self) -> None:
        assert self._key_dir is not None
        self._dir_stamp = _stamp(self._key_dir)
        found = _scan(self._key_dir)
        if found:
            self._keks = found


def _kek_name(version: int) -> str:
    return f"share-kek-{version}.key"


def _stamp(key_dir: Path | None) -> int | None:
    """The directory's mtime: it changes when a key file is added or removed, and costs one stat to check."""
    try:
        return key_dir.stat().st_mtime_ns if key_dir is not None else None
    except FileNotFoundError:
        return None


def _scan(key_dir: Path) -> dict[int, bytes]:
    """Read every existing KEK file. Never creates one: a file vanishing mid-scan must not become a new key."""
    if not key_dir.is_dir():
        return {}
    keks: dict[int, bytes] = {}
    for path in key_dir.iterdir():
        match = KEK_FILE.fullmatch(path.name)
        if match:
            try:
                keks[int(match.group(1))] = _decode(path.read_bytes().strip(), str(path))
            except FileNotFoundError:
                continue
    return keks


def _parse_keks(raw: str) -> dict[int, bytes]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"RENKEI_SHARE_KEKS is not JSON: {error.msg}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError('RENKEI_SHARE_KEKS must be a JSON object {"1": "<base64>", ...}')
    keks: dict[int, bytes] = {}
    for name, value in data.items():
        if not (VERSION.fullmatch(name) and isinstance(value, str)):
            raise ValueError("RENKEI_SHARE_KEKS: versions must be positive integers and keys base64 strings")
        keks[int(name)] = _decode(value.encode(), f"RENKEI_SHARE_KEKS version {name}")
    return keks


def _decode(encoded: bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(f"{where} is not valid base64") from None
    _check_length(key, where)
    return key


def _check_length(key: bytes, where: str) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"{where} must hold {KEY_BYTES} bytes")
