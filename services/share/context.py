"""Everything the share service needs at run time, built once per application."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread

from services.kit.db import Database
from services.kit.settings import Settings
from services.share.blobs.store import BlobStore, FilesystemBlobStore
from services.share.crypto.blind import BlindIndex
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.keyring import KeyRing
from services.share.security.verifier import TokenVerifier
from services.share.store.indexing import Indexer
from services.share.store.search import SearchRunner
from services.share.store.service import ResourceStore

T = TypeVar("T")


@dataclass
class ShareContext:
    settings: Settings
    db: Database
    verifier: TokenVerifier
    keyring: KeyRing
    store: ResourceStore
    search: SearchRunner
    blobs: BlobStore
    _db_limiter: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)

    async def run(self, work: Callable[[], T]) -> T:
        """Blocking database work, on one of this process's few database threads (``settings.db_threads``)."""
        if self._db_limiter is None:  # made on first use, from the event loop that uses it
            self._db_limiter = anyio.CapacityLimiter(self.settings.db_threads)
        return await anyio.to_thread.run_sync(work, limiter=self._db_limiter)

    @classmethod
    def build(cls, settings: Settings, *, plaintext_baseline: bool = False) -> ShareContext:
        """``plaintext_baseline`` stores bodies and index terms unencrypted: for bench/store.py's baseline only."""
        keyring = KeyRing.load(settings)
        blind = BlindIndex(keyring.index_key)
        store = ResourceStore(DataKeys(keyring), Indexer(blind))
        if plaintext_baseline:
            from services.share.store.baseline import PlainCipher, PlainIndex, PlainKeys

            blind = PlainIndex(keyring.index_key)
            store = ResourceStore(PlainKeys(keyring), Indexer(blind), PlainCipher())
        return cls(
            settings=settings,
            db=Database(settings.resolved_share_database_url),
            verifier=TokenVerifier(settings),
            keyring=keyring,
            store=store,
            search=SearchRunner(blind),
            blobs=FilesystemBlobStore(settings.resolved_blob_dir),
        )
