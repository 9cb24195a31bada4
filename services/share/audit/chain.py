"""Hash-chaining the audit log, and verifying the chain.

Writers only append (AuditTrail.record: one INSERT, no lock), so no request waits for another's audit. The chainer
(:func:`chain_pending`, run by the share service in the background) links committed rows in ``seq`` order::

    digest(row) = SHA-256(digest(previous row) ‖ previous seq ‖ every field of the row, length-prefixed)

and records which seq each row followed, in a row of its own (``audit_chain``: the log itself is never
updated). :func:`verify` recomputes the chain from the first row and reports the first row that does not fit:
an altered row breaks its own digest, a deleted row the link of the row after it, rows moved to other places
(seq values swapped) their links, and rows cut off the end the chain head.

Sequence numbers can commit out of order (seq 9 of a slow transaction after seq 10), so the chainer stops at a gap
until the rows after it are ``settle_seconds`` old; the missing seq then belongs to a rolled-back transaction. A row
that commits later still lies behind the head unchained, and verification reports it rather than accept it.

The chain proves the log unchanged to anyone who trusts its head. Someone able to rewrite the whole table could
recompute every digest, so verification prints the head's digest for the operator to keep elsewhere (an anchor).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ARRAY, BigInteger, LargeBinary, Table, bindparam, exists, func, insert, select, text
from sqlalchemy.orm import Session

from services.share.audit.models import AuditChainHead, AuditEntry, AuditLink

GENESIS = bytes(32)
HEAD_ID = 1
SETTLE_SECONDS = 30.0
_CHAIN_LOCK = 0x52454E4B  # pg_advisory_xact_lock key: one chainer at a time across every instance


# The columns a row's digest covers: all but the chain's own.
_ENTRY_COLUMNS = ("seq", "network_id", "recorded", "agent", "patient_id", "action", "outcome", "data_key_id", "event")
_LOG = cast(Table, AuditEntry.__table__)
_ENTRY = tuple(_LOG.c[name] for name in _ENTRY_COLUMNS)  # selected as plain rows: no ORM objects per record


_LINK_ROWS = text(
    "INSERT INTO audit_chain (seq, prev_seq, digest) SELECT * FROM unnest(:seqs, :prevs, :digests)"
).bindparams(bindparam("seqs", type_=ARRAY(BigInteger)), bindparam("prevs", type_=ARRAY(BigInteger)),
             bindparam("digests", type_=ARRAY(LargeBinary)))


def entry_bytes(row: Any) -> bytes:  # an AuditEntry, or a row of its columns
    """Every field of a row except its chain columns, each length-prefixed so no two rows share an encoding."""
    fields = (
        str(row.seq), row.network_id, row.recorded.astimezone(UTC).isoformat(timespec="microseconds"), row.agent,
        row.patient_id, row.action, row.outcome, row.data_key_id,
    )
    parts = [field.encode() for field in fields] + [bytes(row.event)]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def link(previous_digest: bytes, previous_seq: int, row: Any) -> bytes:
    return hashlib.sha256(previous_digest + previous_seq.to_bytes(8, "big") + entry_bytes(row)).digest()


def chain_pending(db: Session, *, now: datetime | None = None, settle_seconds: float = SETTLE_SECONDS,
                  batch: int = 2000) -> int:
    """Link the committed rows after the head, in seq order; returns how many. The caller commits.

    On PostgreSQL one chainer works at a time, across every process: another finding the lock taken does nothing.
    """
    locked = db.get_bind().dialect.name != "postgresql" or db.scalar(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    if not locked:
        return 0
    head = db.get(AuditChainHead, HEAD_ID)
    previous_seq, previous_digest = (head.last_seq, head.digest) if head else (0, GENESIS)
    settled = (now or datetime.now(UTC)) - timedelta(seconds=settle_seconds)
    # Plain rows and one statement, not ORM objects: the chainer runs in a serving process, every few seconds,
    # over every read's record. Every row after the head is unchained: links are written with the head.
    rows = db.execute(select(*_ENTRY).where(_LOG.c.seq > previous_seq).order_by(_LOG.c.seq).limit(batch)
    )
    seqs: list[int] = []
    prevs: list[int] = []
    digests: list[bytes] = []
    for row in rows:
        if row.seq != previous_seq + 1 and row.recorded > settled:
            break  # the seqs in between may belong to transactions still open
        digest = link(previous_digest, previous_seq, row)
        seqs.append(row.seq)
        prevs.append(previous_seq)
        digests.append(digest)
        previous_seq, previous_digest = row.seq, digest
    if not seqs:
        return 0
    if db.get_bind().dialect.name == "postgresql":  # the whole pass in one statement
        db.execute(_LINK_ROWS, {"seqs": seqs, "prevs": prevs, "digests": digests})
    else:
        db.execute(insert(AuditLink), [{"seq": seq, "prev_seq": prev, "digest": digest}
                                       for seq, prev, digest in zip(seqs, prevs, digests, strict=True)])
    if head is None:
        db.add(AuditChainHead(id=HEAD_ID, last_seq=previous_seq, digest=previous_digest, updated=datetime.now(UTC)))
    else:
        head.last_seq, head.digest, head.updated = previous_seq, previous_digest, datetime.now(UTC)
    return len(seqs)


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``problem`` names the first broken link (at row ``seq``), None when intact."""

    checked: int
    pending: int
    head_seq: int
    head_digest: str
    problem: str | None = None
    seq: int | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(db: Session, *, batch: int = 1000, anchors: dict[int, str] | None = None) -> Verdict:
    """Walk the chained rows in seq order, recomputing each digest from the first row on. ``anchors``: digests
    (hex) kept elsewhere from earlier verifications, by the seq they ended at — a log rewritten whole, every
    digest recomputed, no longer matches them."""
    anchors = dict(anchors or {})
    head = db.get(AuditChainHead, HEAD_ID)
    head_seq, head_digest = (head.last_seq, head.digest) if head else (0, GENESIS)
    expected_seq, expected_digest, checked = 0, GENESIS, 0

    unlinked = ~exists().where(AuditLink.seq == AuditEntry.seq)

    def verdict(problem: str | None = None, seq: int | None = None) -> Verdict:
        pending = db.scalar(select(func.count()).select_from(AuditEntry)
                            .where(AuditEntry.seq > head_seq, unlinked)) or 0
        return Verdict(checked, pending, head_seq, head_digest.hex(), problem, seq)

    chained = (select(*_ENTRY, AuditLink.prev_seq, AuditLink.digest)
               .join(AuditLink, AuditLink.seq == _LOG.c.seq).order_by(_LOG.c.seq))
    for row in db.execute(chained.execution_options(yield_per=batch)):
        if row.prev_seq != expected_seq:
            return verdict(f"row {row.seq} was chained after row {row.prev_seq}, but follows row {expected_seq}: "
                           "rows were deleted or moved", row.seq)
        digest = link(expected_digest, expected_seq, row)
        if digest != row.digest:
            return verdict(f"row {row.seq} does not match its digest: it was altered (or rows before it were)",
                           row.seq)
        expected_seq, expected_digest, checked = row.seq, digest, checked + 1
        anchored = anchors.pop(row.seq, None)
        if anchored is not None and anchored.lower() != digest.hex():
            return verdict(f"the chain up to row {row.seq} differs from the digest kept for it: the log was "
                           "rewritten", row.seq)
    if anchors:
        missing = min(anchors)
        return verdict(f"row {missing}, for which a digest was kept, is no longer in the chain", missing)
    if (expected_seq, expected_digest) != (head_seq, head_digest):
        return verdict(f"the chain ends at row {expected_seq} but its head records row {head_seq}: rows were "
                       "removed from its end, or the head was altered", expected_seq)
    late = db.scalar(select(func.min(AuditEntry.seq)).where(AuditEntry.seq < head_seq, unlinked))
    if late is not None:
        return verdict(f"row {late} lies behind the chain's head unchained: it was inserted into the past, or its "
                       "transaction committed long after it was written", late)
    return verdict()
