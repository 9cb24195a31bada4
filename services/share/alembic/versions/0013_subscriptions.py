"""topic-based Subscriptions: each one's delivery state (owner, topic, endpoint, cursor in the event log, retries)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'subscriptions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('owner_kind', sa.String(length=16), nullable=False),
        sa.Column('owner_subject', sa.String(length=200), nullable=False),
        sa.Column('owner_organization', sa.String(length=64), nullable=False),
        sa.Column('owner_profession', sa.String(length=64), nullable=True),
        sa.Column('owner_scopes', sa.Text(), nullable=False),
        sa.Column('topic', sa.String(length=200), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('endpoint', sa.Text(), nullable=False),
        sa.Column('content', sa.String(length=16), nullable=False),
        sa.Column('heartbeat_seconds', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('start', sa.BigInteger(), nullable=False),
        sa.Column('cursor', sa.BigInteger(), nullable=False),
        sa.Column('events_since_start', sa.BigInteger(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('next_attempt', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_due', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions')),
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_due', ['status', 'next_attempt'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_due')
    op.drop_table('subscriptions')
