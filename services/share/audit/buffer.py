"""The audit rows of reads, written in the background in one INSERT per short interval.

A read runs without a transaction (Database.reading), so its audit row would cost a statement and a commit of its
own: on a busy server that round trip cost more than the access decision and the redaction together (bench/
access.py). Instead the request seals its rows (who, what, which patients, when: fixed at the time of the read)
and adds them here; :func:`flush_forever` writes everything added since its last pass in one INSERT … SELECT
unnest(…) every ``audit_flush_seconds``, as IHE ATNA audit sources queue their records for the repository.

What this trades, and how it is bounded:
- A read's record reaches the table up to one interval after the answer (50 ms by default). The AuditEvent search
  and the access report flush this process's rows first.
- A worker killed outright (SIGKILL, out of memory) loses the records of its last interval; a normal shutdown
  writes them (ShareContext.close). ``audit_flush_seconds = 0`` makes every read wait for its own row instead.
- When the database refuses the INSERT the rows stay queued and the next pass tries again; once
  ``MAX_PENDING_ROWS`` wait, reads are refused (503) rather than served unrecorded.

Writes, refusals and break-the-glass keep their records in their own transaction (services/share/fhir/resources.py).
PostgreSQL only; on SQLite each row goes through the request's own session.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import DataError, IntegrityError

from services.kit.db import Database
from services.kit.errors import RenkeiError
from services.share.audit.trail import AuditRow
from services.share.store.statements import statements

if TYPE_CHECKING:
    from services.share.context import ShareContext

log = structlog.get_logger(__name__)

# Rows per INSERT at most: a larger backlog is written in several statements.
MAX_BATCH_ROWS = 1000
# While writes fail, how often the failure is logged again.
FAILURE_LOG_SECONDS = 10.0
# Rows waiting at most (a few minutes of a busy worker's reads) before reads are refused rather than unrecorded.
MAX_PENDING_ROWS = 100_000


class AuditUnavailable(RenkeiError):
    """The audit log cannot take more records: the read is refused rather than served unrecorded."""

    status_code = 503
    code = "audit_unavailable"


class AuditBuffer:
    def __init__(self, db: Database, max_pending: int = MAX_PENDING_ROWS) -> None:
        self.db = db
        self.max_pending = max_pending
        self._rows: list[AuditRow] = []
        self._in_flight = 0  # rows taken off the queue by the flush under way, not yet stored
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one flush at a time, so rows reach the table in the order added

    def add(self, rows: list[AuditRow]) -> None:
        with self._lock:
            if len(self._rows) + len(rows) > self.max_pending:
                raise AuditUnavailable("the audit log is not accepting records; try again shortly")
            self._rows.extend(rows)

    @property
    def pending(self) -> int:
        """Rows not yet stored: queued, or in the INSERT under way (which may yet fail and queue them again)."""
        with self._lock:
            return len(self._rows) + self._in_flight

    def flush(self) -> int:
        """Write every row added so far; how many were taken off the queue. On failure the rows not written stay
        queued, and it raises."""
        with self._writing:
            with self._lock:
                rows, self._rows = self._rows, []
                self._in_flight = len(rows)
            done = 0
            try:
                while done < len(rows):
                    batch = rows[done:done + MAX_BATCH_ROWS]
                    try:
                        self._insert(batch)
                        done += len(batch)
                    except (DataError, IntegrityError):
                        for row in batch:  # find the row the database refuses; the others go in as usual
                            self._insert_or_drop(row)
                            done += 1
            except BaseException:
                with self._lock:
                    self._rows[:0] = rows[done:]  # before anything added meanwhile: the order holds
                    self._in_flight = 0
                raise
            with self._lock:
                self._in_flight = 0
            return done

    def _insert(self, rows: list[AuditRow]) -> None:
        with self.db.reading() as session:  # no transaction: each INSERT commits by itself
            statements(session).insert_audit_rows(session, rows)

    def _insert_or_drop(self, row: AuditRow) -> None:
        """A row the database will never take (a value too long for its column) must not hold back every record
        queued behind it for good: it is logged and dropped. The values stored are ids read from the database and
        from the identity service's tokens, so this is a safeguard, not a path in use."""
        try:
            self._insert([row])
        except (DataError, IntegrityError) as error:
            log.error("audit_row_refused", error=type(error).__name__)


async def flush_forever(buffer: AuditBuffer, interval_seconds: float,
                        run: Callable[[Callable[[], int]], Awaitable[int]]) -> None:
    """Runs until cancelled (the application's shutdown, which then flushes once more: ShareContext.close).
    ``run`` runs the blocking write off the event loop (ShareContext.run_upkeep).

    While the database refuses the records, the failure is logged when it starts and then every
    ``FAILURE_LOG_SECONDS``, not on every pass; its end is logged too."""
    failing_since: float | None = None
    last_logged = 0.0
    while True:
        await asyncio.sleep(interval_seconds)
        if not buffer.pending:
            continue
        try:
            await run(buffer.flush)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            now = time.monotonic()
            if failing_since is None or now - last_logged >= FAILURE_LOG_SECONDS:
                # The error's text may quote the rows' values: it is logged by its type only.
                log.error("audit_flush_failed", pending=buffer.pending, error=type(error).__name__)
                last_logged = now
            failing_since = failing_since if failing_since is not None else now
            continue
        if failing_since is not None:
            log.info("audit_flush_recovered", failing_seconds=round(time.monotonic() - failing_since, 1))
            failing_since = None


async def caught_up(ctx: ShareContext) -> None:
    """Before the audit log is read: this process's queued read records are written first, so a search finds
    the reads that came before it (another worker's follow within its own interval)."""
    if ctx.audit_buffer is not None and ctx.audit_buffer.pending:
        await ctx.run(ctx.audit_buffer.flush)
