"""Everything the share service needs at run time, built once per application."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from services.kit.db import Database
from services.kit.settings import Settings
from services.share.access.gate import Gate
from services.share.access.matrix import Matrix, load_matrix
from services.share.access.policy import NetworkPolicies
from services.share.audit.buffer import AuditBuffer
from services.share.audit.trail import AuditTrail
from services.share.blobs.store import BlobStore, FilesystemBlobStore
from services.share.crypto.blind import BlindIndex
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.keyring import KeyRing
from services.share.security.verifier import TokenVerifier
from services.share.sheets.rules import SheetRules
from services.share.store.indexing import Indexer
from services.share.store.search import SearchRunner
from services.share.store.service import ResourceStore

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass
class ShareContext:
    settings: Settings
    db: Database
    verifier: TokenVerifier
    keyring: KeyRing
    store: ResourceStore
    search: SearchRunner
    blobs: BlobStore
    matrix: Matrix
    audit: AuditTrail
    policies: NetworkPolicies
    gate: Gate
    # The audit records of reads, written in the background (audit/buffer.py); None: each in its own request.
    audit_buffer: AuditBuffer | None = None
    _db_threads: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _upkeep_threads: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    async def run(self, work: Callable[[], T]) -> T:
        """Blocking database work, on one of this process's few database threads (``settings.db_threads``).

        A plain executor rather than anyio's worker threads: its hand-off (a C queue, one wake-up of the event
        loop) costs measurably less CPU per request than anyio's (a Python queue and condition, a limiter).
        The work runs to its end even if the awaiting request is cancelled; work not yet started is dropped.
        """
        if self._db_threads is None:
            self._db_threads = ThreadPoolExecutor(self.settings.db_threads, thread_name_prefix="renkei-db")
        context = contextvars.copy_context()  # log context travels with the work, as anyio's threads would carry
        return await asyncio.get_running_loop().run_in_executor(self._db_threads, context.run, work)

    async def run_upkeep(self, work: Callable[[], T]) -> T:
        """Background database work (chaining the audit log, writing queued audit records) on a thread of its
        own: a pass that takes a tenth of a second must not hold one of the few threads requests wait for. Two,
        so that a long chaining pass does not hold back the next write of queued records."""
        if self._upkeep_threads is None:
            self._upkeep_threads = ThreadPoolExecutor(2, thread_name_prefix="renkei-upkeep")
        return await asyncio.get_running_loop().run_in_executor(self._upkeep_threads, work)

    async def every(self, interval_seconds: float, one_pass: Callable[[], Awaitable[object]], failed: str) -> None:
        """Run ``one_pass`` every ``interval_seconds`` until cancelled (the application's shutdown). A failed pass
        is logged as ``failed`` and tried again next time: background work never stops the service."""
        while True:
            try:
                await one_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(failed)
            await asyncio.sleep(interval_seconds)

    def close(self) -> None:
        for pool in (self._db_threads, self._upkeep_threads):
            if pool is not None:
                pool.shutdown(wait=True)
        self._db_threads = self._upkeep_threads = None
        if self.audit_buffer is not None:
            try:
                self.audit_buffer.flush()  # the reads of the last moments: recorded before the pool closes
            except Exception as error:
                log.error("audit_rows_lost", rows=self.audit_buffer.pending, error=type(error).__name__)
        self.db.dispose()

    @classmethod
    def build(cls, settings: Settings, *, plaintext_baseline: bool = False, enforce_access: bool = True,
              sheet_rules: bool = True) -> ShareContext:
        """``plaintext_baseline`` stores bodies and index terms unencrypted: for bench/store.py's baseline only;
        ``enforce_access`` off serves everything to every caller: for bench/access.py's baseline only;
        ``sheet_rules`` off stores sheets unchecked, with no scene rules: for bench/sheets.py's baseline only."""
        keyring = KeyRing.load(settings)
        blind = BlindIndex(keyring.index_key)
        matrix = load_matrix(settings.schemas_dir)
        policies = NetworkPolicies(settings.auth_url, ttl_seconds=settings.network_policy_ttl_seconds)
        gate = Gate(matrix, policies, enforce=enforce_access)
        sheets = SheetRules.load(settings.schemas_dir,
                                 lambda network_id: policies.current(network_id).emergency_review_days) \
            if sheet_rules else None
        store = ResourceStore(DataKeys(keyring), Indexer(blind), gate=gate, sheets=sheets)
        if plaintext_baseline:
            from services.share.store.baseline import PlainCipher, PlainIndex, PlainKeys

            blind = PlainIndex(keyring.index_key)
            store = ResourceStore(PlainKeys(keyring), Indexer(blind), PlainCipher(), gate=gate,
                                  sheets=sheets)
        db = Database(settings.resolved_share_database_url)
        return cls(
            settings=settings,
            db=db,
            verifier=TokenVerifier(settings),
            keyring=keyring,
            store=store,
            search=SearchRunner(blind),
            blobs=FilesystemBlobStore(settings.resolved_blob_dir),
            matrix=matrix,
            audit=store.trail,
            policies=policies,
            gate=gate,
            audit_buffer=AuditBuffer(db) if settings.audit_flush_seconds and db.engine.dialect.name == "postgresql"
            else None,
        )
