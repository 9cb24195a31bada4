"""Emergency sheets nobody has reviewed for too long get their review Task without anyone opening them.

The scene rules raise a review when a discharge sheet or ACP record changes what an emergency sheet summarises,
and ``$emergency-summary`` raises one for an old sheet when it is read; this pass finds the old sheets no one has
read. Each network's period is its policy's ``emergency_review_days``. A sheet has one open review at a time
(``sheet_records.review_task``), and a review's id derives from the sheet's version, so several server processes
running the pass raise it once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Select, select

from services.share.context import ShareContext
from services.share.sheets.lifecycle import SHARED
from services.share.sheets.models import SheetRecord
from services.share.store.service import Caller

log = structlog.get_logger(__name__)
# The shortest period a network may set (services/auth/directory/schemas.py): no sheet younger is a candidate.
SHORTEST_DAYS = 1


def raise_overdue_reviews(ctx: ShareContext, now: datetime | None = None) -> int:
    """One pass over every network: how many review Tasks it raised."""
    rules = ctx.store.sheets
    if rules is None:
        return 0
    now = now or datetime.now(UTC)
    with ctx.db.transaction() as db:
        candidates = db.execute(_candidates(now)).all()
        raised = [rules.raise_overdue_review(db, Caller(network_id=network_id, subject="system:renkei"), patient_id,
                                             now) for network_id, patient_id in candidates]
    return sum(task is not None for task in raised)


def _candidates(now: datetime) -> Select[str, str]:
    """(network, patient) of the shared emergency sheets with no open review, reviewed before any network's
    shortest period."""
    return select(SheetRecord.network_id, SheetRecord.patient_id).where(
        SheetRecord.kind == "EmergencySheet", SheetRecord.status.in_(SHARED), SheetRecord.review_task == "",
        SheetRecord.reviewed_at < now - timedelta(days=SHORTEST_DAYS))


def _networks(ctx: ShareContext) -> set[str]:
    with ctx.db.transaction() as db:
        return {network for network, _ in db.execute(_candidates(datetime.now(UTC)))}


async def review_forever(ctx: ShareContext, interval_seconds: float) -> None:
    """Runs until cancelled (the application's shutdown); a failed pass is logged and tried again next time."""

    async def one_pass() -> None:
        for network_id in await ctx.run_upkeep(lambda: _networks(ctx)):
            await ctx.policies.of(network_id)  # each network's own period, as its policy says now
        raised = await ctx.run_upkeep(lambda: raise_overdue_reviews(ctx))
        if raised:
            log.info("emergency_reviews_raised", tasks=raised)

    await ctx.every(interval_seconds, one_pass, "emergency_review_pass_failed")
