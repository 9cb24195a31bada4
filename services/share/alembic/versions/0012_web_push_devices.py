"""browsers registered for Web Push, and the claim each instance takes on an (urgent event, device) before it sends

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'web_push_devices',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.String(length=200), nullable=False),
        sa.Column('endpoint', sa.String(length=1000), nullable=False),
        sa.Column('p256dh', sa.String(length=100), nullable=False),
        sa.Column('auth', sa.String(length=40), nullable=False),
        sa.Column('created', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_success', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_web_push_devices')),
        sa.UniqueConstraint('endpoint', name=op.f('uq_web_push_devices_endpoint')),
    )
    with op.batch_alter_table('web_push_devices', schema=None) as batch_op:
        batch_op.create_index('ix_web_push_devices_user', ['network_id', 'user_id'], unique=False)
    op.create_table(
        'web_push_sent',
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('device_id', sa.String(length=32), nullable=False),
        sa.Column('claimed', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('seq', 'device_id', name=op.f('pk_web_push_sent')),
    )
    with op.batch_alter_table('web_push_sent', schema=None) as batch_op:
        batch_op.create_index('ix_web_push_sent_claimed', ['claimed'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_push_sent', schema=None) as batch_op:
        batch_op.drop_index('ix_web_push_sent_claimed')
    op.drop_table('web_push_sent')
    with op.batch_alter_table('web_push_devices', schema=None) as batch_op:
        batch_op.drop_index('ix_web_push_devices_user')
    op.drop_table('web_push_devices')
