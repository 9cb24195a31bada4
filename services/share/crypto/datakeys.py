"""Per-patient data keys: get-or-create, unwrap, rewrap under a new KEK, and destroy (crypto-shredding).

Every resource body is sealed under its patient's data key (resources outside any patient: the network's key).
Data keys are stored wrapped by a key-encryption key; this class is the only code that sees them unwrapped.
Nothing here commits: the caller's transaction decides, as everywhere in the services.

Unwrapped keys are cached per process (bounded, with an expiry) so hot reads skip the database and the unwrap.
Two rules keep the cache honest:

- A patient → key mapping is cached only once the key is known to be committed (found, not created, by this
  session); otherwise a rolled-back creation would leave writers encrypting under a key with no row.
- Destroying a key evicts it at once and again after commit, and every eviction bumps an epoch so a read that
  started before it cannot put the key back. Another process (the CLI) destroying a key is seen here when the
  entry expires (``cache_ttl_seconds``); a store that must refuse at once checks ``destroyed_at`` itself.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.kit.db import TransactionRequired, utcnow, without_transaction
from services.share.crypto.envelope import KEY_BYTES, open_sealed, seal, sealer
from services.share.crypto.keyring import KeyRing
from services.share.crypto.models import NETWORK_KEY_PATIENT, DataKey
from services.share.store.statements import statements

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Session.info entry: ids of the data keys this session inserted (maybe not committed yet).
_CREATED = "renkei.crypto.created_data_keys"
_SESSION_KEYS = "renkei.crypto.session_data_keys"
_COLUMNS = select(
    DataKey.id, DataKey.network_id, DataKey.patient_id, DataKey.kek_version, DataKey.wrapped, DataKey.destroyed_at
)


class _Record(NamedTuple):
    id: str
    network_id: str
    patient_id: str
    kek_version: int
    wrapped: bytes
    destroyed_at: datetime | None


class KeyDestroyed(Exception):
    """The data key was destroyed: everything sealed under it is gone for good (the patient was erased)."""


class UnknownDataKey(LookupError):
    """No data key row has this id: a reference to a key that never committed, or a damaged database."""


class _Cache(Generic[K, V]):
    """A bounded LRU with expiry; ``epoch`` counts evictions so a stale read cannot repopulate an entry."""

    def __init__(self, size: int, ttl_seconds: float) -> None:
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._size = size
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self.epoch = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: K, value: V, epoch: int) -> None:
        """Store ``value`` unless something was evicted since ``epoch`` was read (it may be this very key)."""
        with self._lock:
            if epoch != self.epoch:
                return
            self._items[key] = (time.monotonic() + self._ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def evict(self, key: K) -> None:
        with self._lock:
            self.epoch += 1
            self._items.pop(key, None)


class DataKeys:
    def __init__(self, keyring: KeyRing, *, cache_size: int = 10_000, cache_ttl_seconds: float = 60.0,
                 sealer_cache_size: int = 256) -> None:
        self.keyring = keyring
        self._keys: _Cache[str, bytes] = _Cache(cache_size, cache_ttl_seconds)
        self._owners: _Cache[tuple[str, str], str] = _Cache(cache_size, cache_ttl_seconds)
        self._sealers: _Cache[str, AESGCM] = _Cache(sealer_cache_size, cache_ttl_seconds)

    def sealer(self, key_id: str, raw: bytes) -> AESGCM | bytes:
        """What seals under this key (envelope.sealer), kept for the keys written to most recently only: a
        patient's team writes to them again and again, while at 2.5 kB each the cache of every key would weigh
        25 MB per process."""
        found = self._sealers.get(key_id)
        if found is None:
            epoch = self._sealers.epoch
            found = sealer(raw)
            self._sealers.put(key_id, found, epoch)
        return found

    def key_for(self, db: Session, network_id: str, patient_id: str | None) -> tuple[str, bytes]:
        """The (id, key) that seals this patient's resources (``patient_id`` None: the network's own key).

        Created on first use, in a transaction only (TransactionRequired otherwise). Two transactions creating the
        same key race on the unique constraint; the loser's insert does nothing and it reads the winner's row.
        Raises :class:`KeyDestroyed` for an erased patient.
        """
        owner = _owner(network_id, patient_id)
        # Keys this very session found or created: safe to reuse within it, whatever it later does.
        in_session: dict[tuple[str, str], tuple[str, bytes]] = db.info.setdefault(_SESSION_KEYS, {})
        if owner in in_session:
            return in_session[owner]
        key_id = self._owners.get(owner)
        raw = self._keys.get(key_id) if key_id is not None else None
        if key_id is not None and raw is not None:
            return key_id, raw
        epochs = self._keys.epoch, self._owners.epoch
        # The data_keys table depends on nothing pending in the session: looking a key up must not flush the
        # caller's unwritten rows one resource at a time.
        with db.no_autoflush:
            row = self._find(db, owner)
            if row is None:
                if without_transaction(db):  # the new key must commit with what it seals, or not at all
                    raise TransactionRequired("a new data key needs a transaction")
                self._insert(db, owner, destroyed=False)
                row = self._find(db, owner)
            if row is None:  # Only possible under REPEATABLE READ or stricter, which the services do not use.
                raise RuntimeError("data key not visible after insert; is the session's isolation too strict?")
        raw = self._open(row)
        self._keys.put(row.id, raw, epochs[0])
        if row.id not in db.info.get(_CREATED, ()):
            self._owners.put(owner, row.id, epochs[1])
        in_session[owner] = (row.id, raw)
        return row.id, raw

    def unwrap(self, db: Session, key_id: str, record: tuple[Any, ...] | None = None) -> bytes:
        """The raw data key with this id; raises :class:`KeyDestroyed` once its patient was erased.

        ``record`` is the key's row when the caller read it along with the resource (services/share/store/
        statements.py): a key not in the cache then costs an unwrap, not a query.
        """
        raw = self._keys.get(key_id)
        if raw is not None:
            return raw
        epoch = self._keys.epoch
        if record is not None and record[0] == key_id:
            row: Any = record
        else:
            row = db.execute(_COLUMNS.where(DataKey.id == key_id)).one_or_none()
        if row is None:
            raise UnknownDataKey(f"no data key {key_id}")
        raw = self._open(_Record(*row))
        self._keys.put(key_id, raw, epoch)
        return raw

    def rewrap_all(
        self, db: Session, progress: Callable[[int, int], None] | None = None, *, batch_size: int = 500
    ) -> int:
        """Move every live data key onto the current KEK version; returns how many were rewrapped.

        Bodies are untouched (their data keys do not change), so reads keep working throughout. Batches walk
        the table by id, so ``progress(done, total)`` may commit the session between batches to keep
        transactions short. Rerunning is harmless; a run that returns 0 means the old KEKs can be retired.
        """
        version = self.keyring.current_version
        pending = (DataKey.destroyed_at.is_(None), DataKey.kek_version != version)
        total = db.scalar(select(func.count()).select_from(DataKey).where(*pending)) or 0
        if progress:
            progress(0, total)
        done, last_id = 0, ""
        while rows := [
            _Record(*row)
            for row in db.execute(_COLUMNS.where(*pending, DataKey.id > last_id).order_by(DataKey.id).limit(batch_size))
        ]:
            db.execute(update(DataKey), [self._rewrapped(row, version) for row in rows])
            done += len(rows)
            last_id = rows[-1].id
            if progress:
                progress(done, total)
        return done

    def destroy(self, db: Session, network_id: str, patient_id: str) -> bool:
        """Crypto-shred a patient: empty the wrapped key and mark it destroyed. True if a live key was destroyed.

        A patient without a key gets a destroyed tombstone, so a later write cannot quietly start a new key for
        an erased patient. Copies of the old wrapped bytes outside the row (WAL, dead tuples, backups) stay
        useless once the KEK they were wrapped under is rotated out and deleted.
        """
        if not patient_id:
            raise ValueError("destroy takes a patient id; the network's own key is not destroyed this way")
        owner = _owner(network_id, patient_id)
        db.info.get(_SESSION_KEYS, {}).pop(owner, None)
        row = self._find(db, owner)
        if row is None:
            self._insert(db, owner, destroyed=True)
            row = self._find(db, owner)
        if row is None or row.destroyed_at is not None:
            return False
        db.execute(update(DataKey).where(DataKey.id == row.id).values(wrapped=b"", destroyed_at=utcnow()))
        key_id = row.id
        self._evict(key_id, owner)
        event.listen(db, "after_commit", lambda _session: self._evict(key_id, owner), once=True)
        return True

    # Rows ---------------------------------------------------------------------------------------------

    def _find(self, db: Session, owner: tuple[str, str]) -> _Record | None:
        # Plain SQL (store/statements.py): at scale most creates miss the cache, and the ORM query cost more
        # than the rest of the lookup.
        row = statements(db).data_key(db, *owner)
        return None if row is None else _Record(*row)

    def _insert(self, db: Session, owner: tuple[str, str], *, destroyed: bool) -> None:
        """INSERT … ON CONFLICT DO NOTHING: concurrent creators end with one row, and nobody sees an error."""
        key_id = uuid.uuid4().hex
        version = self.keyring.current_version
        wrapped = b"" if destroyed else self._wrap(secrets.token_bytes(KEY_BYTES), key_id, owner, version)
        now = utcnow()
        values = {
            "id": key_id,
            "network_id": owner[0],
            "patient_id": owner[1],
            "kek_version": version,
            "wrapped": wrapped,
            "created_at": now,
            "destroyed_at": now if destroyed else None,
        }
        dialect = db.get_bind().dialect.name
        if dialect == "postgresql":
            db.execute(pg_insert(DataKey).values(values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            db.execute(sqlite_insert(DataKey).values(values).on_conflict_do_nothing())
        else:  # any other database: a savepoint turns the loser's duplicate into a no-op
            try:
                with db.begin_nested():
                    db.execute(insert(DataKey).values(values))
            except IntegrityError:
                pass
        db.info.setdefault(_CREATED, set()).add(key_id)

    # Wrapping -----------------------------------------------------------------------------------------

    def _open(self, row: _Record) -> bytes:
        if row.destroyed_at is not None:
            raise KeyDestroyed(f"data key {row.id} was destroyed at {row.destroyed_at.isoformat()}")
        aad = _aad(row.id, row.network_id, row.patient_id)
        return open_sealed(self.keyring.key(row.kek_version), row.wrapped, aad)

    def _wrap(self, raw: bytes, key_id: str, owner: tuple[str, str], version: int) -> bytes:
        return seal(self.keyring.key(version), raw, _aad(key_id, *owner))

    def _rewrapped(self, row: _Record, version: int) -> dict[str, Any]:
        wrapped = self._wrap(self._open(row), row.id, (row.network_id, row.patient_id), version)
        return {"id": row.id, "wrapped": wrapped, "kek_version": version}

    def _evict(self, key_id: str, owner: tuple[str, str]) -> None:
        self._keys.evict(key_id)
        self._sealers.evict(key_id)
        self._owners.evict(owner)


def _owner(network_id: str, patient_id: str | None) -> tuple[str, str]:
    if not network_id:
        raise ValueError("a data key belongs to a network")
    return network_id, patient_id or NETWORK_KEY_PATIENT


def _aad(key_id: str, network_id: str, patient_id: str) -> bytes:
    # Binds the wrapped key to its row: swapping wrapped values between patients makes both fail to unwrap.
    return f"datakey:{key_id}:{network_id}:{patient_id}".encode()
