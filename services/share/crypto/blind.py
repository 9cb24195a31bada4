"""Blind indexes: keyed hashes of normalised names and identifiers, so search columns hold no plain text.

A token is HMAC-SHA256 under a per-network key (HKDF from the index key), truncated to 128 bits: equal values in
one network give equal tokens, so search is an equality lookup, while the same name in two networks gives
unrelated tokens and nothing can be learnt without the index key.

FHIR string search is prefix by default, with ``:exact`` and ``:contains``. A value is indexed as its exact form
(``e:``), each prefix up to 64 characters (``p:``) and its character unigrams and bigrams (``g:``). A query must
find all of its tokens. Contains is approximate: a string holding every bigram of the query need not hold the
query itself (``abxbc`` has both bigrams of ``abc``), so the store re-checks decrypted resources; prefixes longer
than 64 characters are likewise re-checked. Tokens are deterministic, so their frequencies are visible to whoever
reads the table (unigrams most of all); index short fields such as names this way, not free text.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Literal

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SearchMode = Literal["prefix", "exact", "contains"]
PREFIX_CAP = 64
TOKEN_HEX_CHARS = 32
_MAX_CACHED_NETWORKS = 1024
_MAX_CACHED_VOCABULARY = 8192


def _translation() -> dict[int, str | None]:
    """Katakana → hiragana (so やまだ matches ヤマダ); whitespace, middle dots and zero-width marks removed."""
    table: dict[int, str | None] = {cp: chr(cp - 0x60) for cp in range(0x30A1, 0x30F7)}  # ァ..ヶ → ぁ..ゖ
    table |= {0x30FD: "\u309d", 0x30FE: "\u309e"}  # ヽヾ → ゝゞ
    # ヷヸヹヺ have no precomposed hiragana: spell them as hiragana + voiced mark, as ワ゛ etc. normalise to.
    table |= {0x30F7: "わ\u3099", 0x30F8: "ゐ\u3099", 0x30F9: "ゑ\u3099", 0x30FA: "を\u3099"}
    table |= {cp: None for cp in range(0x3001) if chr(cp).isspace()}  # U+3000 ideographic space included
    table |= dict.fromkeys((0x00B7, 0x2027, 0x30FB, 0x200B, 0x2060, 0xFEFF))  # ·‧・ and invisible joiners
    return table


_TABLE = _translation()


def normalise(value: str) -> str:
    """The form both indexing and querying hash, so the ways people type one name all meet.

    NFKC folds full- and half-width forms (ｶﾀｶﾅ → カタカナ, ＡＢＣ → ABC) and composes voiced marks; casefold
    ignores case; katakana becomes hiragana; spaces and middle dots go (山田　太郎 = 山田太郎, ヤマダ・タロウ =
    やまだたろう). The final NFKC recomposes marks that a removed space had kept apart, so the result is stable.
    """
    folded = unicodedata.normalize("NFKC", value).casefold().translate(_TABLE)
    return unicodedata.normalize("NFKC", folded)


class BlindIndex:
    normalise = staticmethod(normalise)

    def __init__(self, index_key: bytes) -> None:
        if len(index_key) != 32:
            raise ValueError("the blind-index key must be 32 bytes")
        self._index_key = index_key
        # A keyed HMAC state per network, copied per token: about half the cost of keying HMAC afresh each time.
        self._network_macs: dict[str, hmac.HMAC] = {}
        self._vocabulary: dict[tuple[str, str], str] = {}

    def token(self, network_id: str, value: str) -> str:
        """The token of one normalised value (identifiers, codes): equal inputs give equal tokens."""
        return _mac(self._network_mac(network_id), normalise(value))

    def vocabulary_token(self, network_id: str, value: str) -> str:
        """:meth:`token` of a value from a closed vocabulary (a status, a category, a questionnaire's canonical),
        remembered: most resources repeat the same few, and each token costs an HMAC against cold caches. Never for
        identifiers, names or text, which would then stay in memory beyond the request that brought them."""
        cached = self._vocabulary.get((network_id, value))
        if cached is None:
            if len(self._vocabulary) >= _MAX_CACHED_VOCABULARY:
                self._vocabulary.clear()
            cached = self._vocabulary[(network_id, value)] = self.token(network_id, value)
        return cached

    def string_tokens(self, network_id: str, value: str) -> set[str]:
        """Every token a FHIR string search (prefix, exact or contains) may look for in ``value``."""
        keyed = self._network_mac(network_id)
        return {_mac(keyed, term) for term in _string_terms(normalise(value))}

    def query_tokens(self, network_id: str, query: str, mode: SearchMode = "prefix") -> set[str]:
        """The tokens a matching value must all have. Empty when the query normalises to nothing: refuse it."""
        keyed = self._network_mac(network_id)
        return {_mac(keyed, term) for term in _query_terms(normalise(query), mode)}

    def _network_mac(self, network_id: str) -> hmac.HMAC:
        mac = self._network_macs.get(network_id)
        if mac is None:
            info = b"renkei-blind:" + network_id.encode()
            key = HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(self._index_key)
            mac = hmac.new(key, digestmod=hashlib.sha256)
            if len(self._network_macs) >= _MAX_CACHED_NETWORKS:
                self._network_macs.clear()
            self._network_macs[network_id] = mac
        return mac


def _string_terms(text: str) -> set[str]:
    if not text:
        return set()
    terms = {"e:" + text}
    terms.update("p:" + text[:end] for end in range(1, min(len(text), PREFIX_CAP) + 1))
    terms.update("g:" + char for char in text)
    terms.update("g:" + text[i : i + 2] for i in range(len(text) - 1))
    return terms


def _query_terms(text: str, mode: SearchMode) -> set[str]:
    if not text:
        return set()
    if mode == "exact":
        return {"e:" + text}
    if mode == "prefix":
        return {"p:" + text[:PREFIX_CAP]}
    if mode != "contains":
        raise ValueError(f"unknown string search mode {mode!r}")
    if len(text) == 1:
        return {"g:" + text}
    return {"g:" + text[i : i + 2] for i in range(len(text) - 1)}


def _mac(keyed: hmac.HMAC, term: str) -> str:
    mac = keyed.copy()
    mac.update(term.encode())
    return mac.hexdigest()[:TOKEN_HEX_CHARS]
