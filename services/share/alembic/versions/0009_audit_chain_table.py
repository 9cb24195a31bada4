"""the audit chain's links move to a table of their own: the audit log is never updated, only appended to

The chainer used to fill two columns of every audit-log row after the fact, which rewrote each row (about a
kilobyte, with its three index entries) a second time. Its links now go to ``audit_chain`` — the row's seq, the
seq it follows and the chain's digest — and on PostgreSQL both tables refuse every change and every delete.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_FIELDS = ("seq", "network_id", "recorded", "agent", "patient_id", "action", "outcome", "data_key_id", "event")

_NEVER_CHANGED = """
CREATE FUNCTION renkei_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: its rows are never changed or deleted', TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION renkei_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION renkei_append_only();
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION renkei_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION renkei_append_only();
"""

# Migration 0005's trigger, restored by the downgrade.
_CHANGED_ONCE = f"""
CREATE FUNCTION renkei_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'audit_log is append-only: its rows cannot be deleted';
    END IF;
    IF OLD.digest IS NOT NULL OR {" OR ".join(f"NEW.{f} IS DISTINCT FROM OLD.{f}" for f in _FIELDS)} THEN
        RAISE EXCEPTION 'audit_log is append-only: a row changes once, when it is chained, and only its chain';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION renkei_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION renkei_audit_log_append_only();
"""


def _drop_triggers(*tables: str) -> None:
    for table in tables:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        'audit_chain',
        sa.Column('seq', _SEQ, autoincrement=False, nullable=False),
        sa.Column('prev_seq', _SEQ, nullable=False),
        sa.Column('digest', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_chain')),
    )
    op.execute("INSERT INTO audit_chain (seq, prev_seq, digest)"
               " SELECT seq, prev_seq, digest FROM audit_log WHERE digest IS NOT NULL")
    if postgresql:
        _drop_triggers("audit_log")
        op.execute("DROP FUNCTION renkei_audit_log_append_only()")
    # On SQLite the table is rebuilt: it keeps AUTOINCREMENT (a seq is never reused, even one cut off the end).
    with op.batch_alter_table('audit_log', schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column('digest')
        batch_op.drop_column('prev_seq')
    if postgresql:
        op.execute(_NEVER_CHANGED)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _drop_triggers("audit_chain", "audit_log")
        op.execute("DROP FUNCTION renkei_append_only()")
    with op.batch_alter_table('audit_log', schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column('prev_seq', _SEQ, nullable=True))
        batch_op.add_column(sa.Column('digest', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE audit_log SET prev_seq = (SELECT c.prev_seq FROM audit_chain c WHERE c.seq = audit_log.seq),"
               " digest = (SELECT c.digest FROM audit_chain c WHERE c.seq = audit_log.seq)")
    op.drop_table('audit_chain')
    if postgresql:
        op.execute(_CHANGED_ONCE)
