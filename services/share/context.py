"""Everything the share service needs at run time, built once per application."""

from __future__ import annotations

from dataclasses import dataclass

from services.kit.db import Database
from services.kit.settings import Settings
from services.share.crypto.blind import BlindIndex
from services.share.crypto.datakeys import DataKeys
from services.share.crypto.keyring import KeyRing
from services.share.security.verifier import TokenVerifier
from services.share.store.indexing import Indexer
from services.share.store.search import SearchRunner
from services.share.store.service import ResourceStore


@dataclass
class ShareContext:
    settings: Settings
    db: Database
    verifier: TokenVerifier
    keyring: KeyRing
    store: ResourceStore
    search: SearchRunner

    @classmethod
    def build(cls, settings: Settings) -> ShareContext:
        keyring = KeyRing.load(settings)
        blind = BlindIndex(keyring.index_key)
        return cls(
            settings=settings,
            db=Database(settings.resolved_share_database_url),
            verifier=TokenVerifier(settings),
            keyring=keyring,
            store=ResourceStore(DataKeys(keyring), Indexer(blind)),
            search=SearchRunner(blind),
        )
