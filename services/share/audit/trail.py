"""Writing the audit trail: one appended row per access (services/share/audit/models.py).

The AuditEvent itself is sealed under the network's data key, like a resource body, and bound to its row's
network, agent and time; the chain (chain.py) makes any later change to the row visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy.orm import Session

from services.share.audit.events import expand, is_compact
from services.share.audit.models import AuditEntry
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.envelope import open_sealed, seal
from services.share.store.statements import statements

ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({"0", "4", "8", "12"})


@dataclass(frozen=True)
class Access:
    """One access to record: who (``agent``), in which network, about which patient ("" for none)."""

    network_id: str
    agent: str
    patient_id: str
    action: str  # C R U D E
    outcome: str  # 0 success, 4 minor failure (a refusal), 8 serious, 12 major


class AuditRow(NamedTuple):
    """One audit_log row, its event already sealed: what Statements.insert_audit writes."""

    network_id: str
    recorded: datetime
    agent: str
    patient_id: str
    action: str
    outcome: str
    data_key_id: str
    event: bytes


def event_aad(network_id: str, agent: str, recorded: datetime) -> bytes:
    return f"renkei:audit:v1:{network_id}:{agent}:{recorded.astimezone(UTC).isoformat()}".encode()


class AuditTrail:
    def __init__(self, keys: DataKeys, cipher: Any = None) -> None:
        """``cipher``: the store's (services/share/store/service.py Cipher); AES-256-GCM when not given."""
        self.keys = keys
        self._seal = cipher.seal if cipher is not None else seal
        self._open = cipher.open if cipher is not None else open_sealed

    def record(self, db: Session, access: Access, event: dict[str, Any], *, recorded: datetime | None = None) -> int:
        """Append one row in the caller's transaction (one INSERT; no lock, no read of other rows); its seq."""
        # A plain statement: it runs on every request, and SQLAlchemy's insert machinery cost more than the insert.
        return statements(db).insert_audit(db, self.row(db, access, event, recorded=recorded))

    def row(self, db: Session, access: Access, event: dict[str, Any], *, recorded: datetime | None = None
            ) -> AuditRow:
        """The row that records ``event``, sealed under the network's key (looked up, or created, through ``db``)."""
        if access.action not in ACTIONS or access.outcome not in OUTCOMES:
            raise ValueError(f"not an AuditEvent action/outcome: {access.action!r}/{access.outcome!r}")
        recorded = recorded or datetime.now(UTC)
        key_id, key = self.keys.key_for(db, access.network_id, None)
        sealed = self._seal(self.keys.sealer(key_id, key), orjson.dumps(event),
                            event_aad(access.network_id, access.agent, recorded))
        return AuditRow(access.network_id, recorded, access.agent, access.patient_id, access.action, access.outcome,
                        key_id, sealed)

    def event(self, db: Session, row: AuditEntry) -> dict[str, Any]:
        """The AuditEvent a row holds, decrypted (raises TamperedCiphertext if it was moved or altered), and
        expanded from its stored form where it is compact (events.py)."""
        key = self.keys.unwrap(db, row.data_key_id)
        stored = dict(orjson.loads(self._open(key, row.event, event_aad(row.network_id, row.agent, row.recorded))))
        if is_compact(stored):
            return expand(stored, action=row.action, outcome=row.outcome, recorded=row.recorded)
        return stored
