"""the audit log, append-only and hash-chained

On PostgreSQL a trigger keeps it append-only: no row is deleted (nor the table truncated), and a row changes
once only, when the chainer fills its chain columns. Only a superuser (who can switch triggers off) gets
around it, and the chain (services/share/audit/chain.py) shows what they changed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FIELDS = ("seq", "network_id", "recorded", "agent", "patient_id", "action", "outcome", "data_key_id", "event")
_APPEND_ONLY = f"""
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


def upgrade() -> None:
    op.create_table(
        'audit_chain_head',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('digest', sa.LargeBinary(), nullable=False),
        sa.Column('updated', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_head')),
    )
    op.create_table(
        'audit_log',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('recorded', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('agent', sa.String(length=200), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('action', sa.String(length=1), nullable=False),
        sa.Column('outcome', sa.String(length=2), nullable=False),
        sa.Column('data_key_id', sa.String(length=64), nullable=False),
        sa.Column('event', sa.LargeBinary(), nullable=False),
        sa.Column('prev_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('digest', sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_log')),
        sqlite_autoincrement=True,  # never reuse a seq, even one cut off the end
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_agent', ['network_id', 'agent', 'recorded'], unique=False)
        batch_op.create_index('ix_audit_log_patient', ['network_id', 'patient_id', 'recorded'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_APPEND_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION renkei_audit_log_append_only()")
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_patient')
        batch_op.drop_index('ix_audit_log_agent')
    op.drop_table('audit_log')
    op.drop_table('audit_chain_head')
