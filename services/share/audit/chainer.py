"""The share service's background chainer: every half second or so it links what was appended to the audit log."""

from __future__ import annotations

import structlog

from services.share.audit.chain import chain_pending
from services.share.context import ShareContext

log = structlog.get_logger(__name__)


async def chain_forever(ctx: ShareContext, interval_seconds: float) -> None:
    """Runs until cancelled (the application's shutdown). A failed pass is logged and retried on the next one:
    rows wait unchained meanwhile, and `renkei audit verify` counts them as pending."""

    async def one_pass() -> None:
        linked = await ctx.run_upkeep(lambda: _chain_once(ctx))
        if linked:
            log.debug("audit_rows_chained", rows=linked)

    await ctx.every(interval_seconds, one_pass, "audit_chain_failed")


def _chain_once(ctx: ShareContext) -> int:
    with ctx.db.transaction() as db:
        return chain_pending(db)
