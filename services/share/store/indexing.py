"""Turning a resource into search-index entries: blind-index tokens, references and date ranges."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.share.crypto.blind import BlindIndex
from services.share.store import params as P
from services.share.store.types import reference_target


def token_keys(system: str | None, code: str) -> list[str]:
    """The forms a token search can take: ``code``, ``system|code``, ``|code`` and ``system|``."""
    keys = [f"*|{code}"]
    if system:
        keys += [f"{system}|{code}", f"{system}|*"]
    else:
        keys.append(f"|{code}")
    return keys


def uri_keys(value: str) -> list[str]:
    """A canonical matches with and without its ``|version``."""
    keys = [value]
    if "|" in value:
        keys.append(value.split("|", 1)[0])
    return keys


class Indexer:
    def __init__(self, blind: BlindIndex) -> None:
        self.blind = blind

    def entries(
        self, network_id: str, resource_type: str, resource_id: str, body: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Rows for the ``search_index`` table, as plain dicts for one executemany (no ORM objects: a patient
        has a hundred-odd blind-index tokens)."""
        rows: list[dict[str, Any]] = []
        for param in P.PARAMS.get(resource_type, {}).values():
            values = [v for path in param.paths for v in P.values_at(body, path)]
            for value_text, low, high in self._index_values(network_id, param, values):
                rows.append(
                    {
                        "network_id": network_id,
                        "resource_type": resource_type,
                        "resource_id": resource_id,
                        "param": param.name,
                        "value": value_text,
                        "date_low": low,
                        "date_high": high,
                    }
                )
        return rows

    def _index_values(
        self, network_id: str, param: P.Param, values: list[Any]
    ) -> set[tuple[str | None, datetime | None, datetime | None]]:
        found: set[tuple[str | None, datetime | None, datetime | None]] = set()
        token = self.blind.vocabulary_token if param.vocabulary else self.blind.token
        for value in values:
            if param.kind == "token":
                for system, code in P.token_values(value):
                    found |= {(token(network_id, f"tok:{k}"), None, None) for k in token_keys(system, code)}
            elif param.kind == "string":
                for text in P.string_values(value):
                    found |= {(t, None, None) for t in self.blind.string_tokens(network_id, text)}
            elif param.kind == "uri" and isinstance(value, str):
                found |= {(token(network_id, f"uri:{k}"), None, None) for k in uri_keys(value)}
            elif param.kind == "reference":
                target = reference_target(value)
                if target:
                    found.add((f"{target[0]}/{target[1]}", None, None))
            elif param.kind == "date":
                found |= {(None, low, high) for low, high in P.date_values(value)}
        return found
