"""break-the-glass grants

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'break_glass_grants',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('subject', sa.String(length=200), nullable=False),
        sa.Column('organization', sa.String(length=64), nullable=False),
        sa.Column('profession', sa.String(length=64), nullable=False),
        sa.Column('granted_at', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('audit_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_break_glass_grants')),
    )
    with op.batch_alter_table('break_glass_grants', schema=None) as batch_op:
        batch_op.create_index('ix_break_glass_grants_granted', ['network_id', 'granted_at'], unique=False)
        batch_op.create_index('ix_break_glass_grants_patient', ['network_id', 'patient_id', 'subject'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('break_glass_grants', schema=None) as batch_op:
        batch_op.drop_index('ix_break_glass_grants_patient')
        batch_op.drop_index('ix_break_glass_grants_granted')
    op.drop_table('break_glass_grants')
