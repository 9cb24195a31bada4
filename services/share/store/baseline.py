"""A plain-text store, for one purpose only: the baseline that ``bench/store.py`` measures encryption against.

Bodies are stored as they are and index terms unhashed. Nothing in the server uses this unless
``create_app(..., plaintext_baseline=True)`` asks for it, which only the benchmark does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from services.share.crypto.blind import BlindIndex, SearchMode, _query_terms, _string_terms, normalise
from services.share.crypto.datakeys import DataKeys

_LIMIT = 200  # SearchEntry.value's width


class PlainCipher:
    @staticmethod
    def seal(key: Any, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext

    @staticmethod
    def open(key: Any, blob: bytes, aad: bytes) -> bytes:
        return blob


class PlainKeys(DataKeys):
    def key_for(self, db: Session, network_id: str, patient_id: str | None) -> tuple[str, bytes]:
        return "plain", b""

    def unwrap(self, db: Session, key_id: str, record: tuple[Any, ...] | None = None) -> bytes:
        return b""

    def sealer(self, key_id: str, raw: bytes) -> bytes:
        return b""


class PlainIndex(BlindIndex):
    def token(self, network_id: str, value: str) -> str:
        return normalise(value)[:_LIMIT]

    def string_tokens(self, network_id: str, value: str) -> set[str]:
        return {term[:_LIMIT] for term in _string_terms(normalise(value))}

    def query_tokens(self, network_id: str, query: str, mode: SearchMode = "prefix") -> set[str]:
        return {term[:_LIMIT] for term in _query_terms(normalise(query), mode)}
