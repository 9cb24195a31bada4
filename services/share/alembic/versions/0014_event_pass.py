"""the event hub's pass as one PostgreSQL function: number what committed, then read what follows a cursor

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 22:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One call, one round trip and one commit for a pass of the event hub (services/share/events/hub.py), instead of a
# transaction of six statements: under load each statement's round trip waited its turn for the processor.
# Numbering: what is pending first, then the numbers by id, under an advisory lock (0x52454E45) so that passes never
# overlap. In one statement the planner sized the pending events from the table's statistics, and statistics taken
# while most events waited (right after a start or a bulk load) made it hash-join a scan of the whole log on every
# pass: 2.3 ms a pass instead of 0.1 at 30,000 events (bench/sheets.py with pg_stat_statements). The read that
# follows sees it (each statement of a VOLATILE function takes a new snapshot) and says on each row how many this
# call numbered (other instances are then told); the caller receives the rows only once the call's implicit
# transaction committed.
_CREATE = """
CREATE FUNCTION renkei_event_pass(after BIGINT, batch INTEGER, readable INTEGER)
RETURNS TABLE (seq BIGINT, network_id VARCHAR, patient_id VARCHAR, resource_type VARCHAR, resource_id VARCHAR,
               version INTEGER, kind VARCHAR, author_organization VARCHAR, draft BOOLEAN, numbered INTEGER)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    top BIGINT;
    pending BIGINT[] := '{}';
BEGIN
    IF pg_try_advisory_xact_lock(1380273733) THEN
        SELECT coalesce(max(e.seq), 0) INTO top FROM event_log e;
        pending := array(SELECT e.id FROM event_log e WHERE e.seq IS NULL ORDER BY e.id LIMIT batch);
        IF cardinality(pending) > 0 THEN
            UPDATE event_log e SET seq = top + d.n
            FROM unnest(pending) WITH ORDINALITY AS d(id, n) WHERE e.id = d.id;
        END IF;
    END IF;
    RETURN QUERY
        SELECT e.seq, e.network_id, e.patient_id, e.resource_type, e.resource_id, e.version, e.kind,
               e.author_organization, e.draft, cardinality(pending)
        FROM event_log e WHERE e.seq > after ORDER BY e.seq LIMIT readable;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION renkei_event_pass(BIGINT, INTEGER, INTEGER)")
