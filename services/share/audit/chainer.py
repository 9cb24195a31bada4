"""The share service's background chainer: every few seconds it links what was appended to the audit log."""

from __future__ import annotations

import asyncio

import structlog

from services.share.audit.chain import chain_pending
from services.share.context import ShareContext

log = structlog.get_logger(__name__)


async def chain_forever(ctx: ShareContext, interval_seconds: float) -> None:
    """Runs until cancelled (the application's shutdown). A failed pass is logged and retried on the next one:
    rows wait unchained meanwhile, and `renkei audit verify` counts them as pending."""
    while True:
        try:
            linked = await ctx.run_upkeep(lambda: _chain_once(ctx))
            if linked:
                log.debug("audit_rows_chained", rows=linked)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audit_chain_failed")
        await asyncio.sleep(interval_seconds)


def _chain_once(ctx: ShareContext) -> int:
    with ctx.db.transaction() as db:
        return chain_pending(db)
