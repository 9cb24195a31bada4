"""Giving committed events their sequence numbers, one pass at a time across every instance.

Writers only append (the trigger of migration 0011: no lock, no counter row that every commit would queue on). A
pass numbers every committed event still without a number, in the order they were appended, after the highest
number given so far, and commits. Passes never overlap (a PostgreSQL advisory lock, held to the pass's commit;
SQLite has one writer anyway), so numbers become visible in increasing order and a reader's cursor never passes
an event still to come. What this costs: an event reaches readers one pass after its write's commit — a pass is
woken right after each local commit (services/share/events/hub.py), and every instance also runs one on a short
timer, so a write on another instance waits at most that long even when the wake-up channel is down.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

from services.share.events.log import Event

BATCH = 5000  # events numbered per pass at most; a larger backlog takes several passes

# SQLite: one statement (one writer at a time, and its planner walks the partial index of what is pending).
# PostgreSQL numbers in renkei_event_pass (migration 0014, EventPass below), under an advisory lock.
_NUMBER_SQLITE = text(
    "WITH top AS (SELECT coalesce(max(seq), 0) AS m FROM event_log),"
    " pending AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM event_log WHERE seq IS NULL"
    "             ORDER BY id LIMIT :batch)"
    " UPDATE event_log SET seq = (SELECT m FROM top) + pending.n FROM pending WHERE event_log.id = pending.id"
)


def sequence_pending(db: Session) -> int:
    """SQLite: number the committed events waiting; how many were numbered. Run in a transaction of its own."""
    assert db.get_bind().dialect.name != "postgresql", "PostgreSQL numbers with EventPass"
    return int(db.execute(_NUMBER_SQLITE, {"batch": BATCH}).rowcount or 0)  # type: ignore[attr-defined]


_HUB_CALL = "SELECT * FROM renkei_event_pass(%s, %s, %s)"


class EventPass:
    """PostgreSQL: a pass of the event hub — number what committed, read what follows a cursor — as one call of
    renkei_event_pass (migration 0014) on a connection of the hub's own, in autocommit: one round trip and one
    commit instead of a transaction of six statements, each of which waited its turn for the processor under load.
    Used from one thread at a time (the hub's)."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    def __call__(self, after: int, limit: int) -> tuple[int, list[Event]]:
        """How many events this call numbered (0 also when another instance's pass holds the lock: that pass
        numbers them), and up to ``limit`` numbered events after ``after``, in order. With ``limit`` 1 the count is
        still exact: when anything was numbered, there is a row to carry it."""
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._url, autocommit=True)
        try:
            rows = self._connection.execute(_HUB_CALL, (after, BATCH, limit)).fetchall()
        except psycopg.Error:
            self.close()  # the next pass connects again
            raise
        events = [Event(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]),  # type: ignore[call-overload]
                        str(r[6]), str(r[7]), bool(r[8])) for r in rows]
        return (int(rows[0][9]) if rows else 0), events  # type: ignore[call-overload]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
