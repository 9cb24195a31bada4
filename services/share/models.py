"""Imports every share-service model so ``ShareBase.metadata`` is complete (Alembic, the schema test).

The resource store, access and event tables arrive with their issues; until then the schema is empty.
"""

from services.share.base import ShareBase

__all__ = ["ShareBase"]
