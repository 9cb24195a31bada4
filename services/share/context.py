"""Everything the share service needs at run time, built once per application."""

from __future__ import annotations

from dataclasses import dataclass

from services.kit.db import Database
from services.kit.settings import Settings
from services.share.security.verifier import TokenVerifier


@dataclass
class ShareContext:
    settings: Settings
    db: Database
    verifier: TokenVerifier

    @classmethod
    def build(cls, settings: Settings) -> ShareContext:
        return cls(
            settings=settings,
            db=Database(settings.resolved_share_database_url),
            verifier=TokenVerifier(settings),
        )
