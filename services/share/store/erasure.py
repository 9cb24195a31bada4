"""Crypto-shredding a patient: destroy their data key, drop their index entries, leave an audit record.

Every version of every resource in the patient's compartment stays in the table as ciphertext that nothing can
open any more; reads answer 410. The audit record lives under the network's key, so it survives the erasure.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.kit.errors import NotFound
from services.share.audit.trail import Access
from services.share.sheets.models import SheetRecord
from services.share.store.audit_records import store_audit_event
from services.share.store.models import ResourceHead, ResourceVersion, SearchEntry
from services.share.store.service import ERASED, ResourceStore


@dataclass(frozen=True)
class Erasure:
    network_id: str
    patient_id: str
    resources: int
    audit_event_id: str


def erase_patient(store: ResourceStore, db: Session, patient_id: str, actor: str) -> Erasure:
    head = db.get(ResourceHead, ("Patient", patient_id))
    if head is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    network_id = head.network_id
    in_compartment = select(ResourceHead.resource_type, ResourceHead.resource_id).where(
        ResourceHead.network_id == network_id, ResourceHead.patient_id == patient_id
    )
    members = list(db.execute(in_compartment))
    count = db.scalar(select(func.count()).select_from(in_compartment.subquery())) or 0
    store.keys.destroy(db, network_id, patient_id)
    # Other processes may hold the unwrapped key in their caches; emptying the ciphertexts makes the erasure
    # take effect everywhere on the next read, not when those caches expire.
    db.execute(
        update(ResourceVersion)
        .where(ResourceVersion.network_id == network_id, ResourceVersion.patient_id == patient_id)
        .values(body=b"", data_key_id=ERASED)
    )
    # And the heads, so that no process (whatever keys it still has cached) accepts new writes for the patient.
    db.execute(
        update(ResourceHead)
        .where(ResourceHead.network_id == network_id, ResourceHead.patient_id == patient_id)
        .values(deleted=True)
    )
    for resource_type, resource_id in members:
        # Blind-index tokens are keyed hashes, but they would still link the erased records together.
        db.execute(
            delete(SearchEntry).where(
                SearchEntry.resource_type == resource_type, SearchEntry.resource_id == resource_id
            )
        )
    # What the sheet rules knew of the patient's sheets (kinds, statuses, dates) goes with them.
    db.execute(delete(SheetRecord).where(SheetRecord.network_id == network_id, SheetRecord.patient_id == patient_id))
    record = store_audit_event(
        "patient-erase", "患者データ消去 (crypto-shred)", f"Patient/{patient_id}", actor, action="D", outcome="0"
    )
    seq = store.trail.record(db, Access(network_id, actor, patient_id, "D", "0"), record)
    return Erasure(network_id, patient_id, int(count), f"audit-{seq}")
