"""sheet templates registered per network, and each sheet's kind and status, for the sheet rules

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'sheet_templates',
        sa.Column('resource_id', sa.String(length=64), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('url', sa.String(length=255), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('shipped', sa.Boolean(), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('resource_id', name=op.f('pk_sheet_templates')),
    )
    with op.batch_alter_table('sheet_templates', schema=None) as batch_op:
        batch_op.create_index('ix_sheet_templates_canonical', ['network_id', 'url', 'version'], unique=True)
    op.create_table(
        'sheet_records',
        sa.Column('resource_id', sa.String(length=64), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=64), nullable=False),
        sa.Column('template', sa.String(length=320), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('author_organization', sa.String(length=64), nullable=False),
        sa.Column('updated_at', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('reviewed_at', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('review_task', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('resource_id', name=op.f('pk_sheet_records')),
    )
    with op.batch_alter_table('sheet_records', schema=None) as batch_op:
        batch_op.create_index('ix_sheet_records_patient', ['network_id', 'patient_id', 'kind'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sheet_records', schema=None) as batch_op:
        batch_op.drop_index('ix_sheet_records_patient')
    op.drop_table('sheet_records')
    with op.batch_alter_table('sheet_templates', schema=None) as batch_op:
        batch_op.drop_index('ix_sheet_templates_canonical')
    op.drop_table('sheet_templates')
