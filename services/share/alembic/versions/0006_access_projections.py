"""care-team participants and consent terms, as access decisions read them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'care_team_participants',
        sa.Column('care_team_id', sa.String(length=64), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('team_status', sa.String(length=20), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('member_id', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=64), nullable=False),
        sa.Column('start', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('end', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('care_team_id', 'position', name=op.f('pk_care_team_participants')),
    )
    with op.batch_alter_table('care_team_participants', schema=None) as batch_op:
        batch_op.create_index('ix_care_team_participants_patient', ['network_id', 'patient_id'], unique=False)
    op.create_table(
        'consent_terms',
        sa.Column('consent_id', sa.String(length=64), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('start', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('end', services.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('organizations', sa.JSON(), nullable=True),
        sa.Column('excluded_organizations', sa.JSON(), nullable=False),
        sa.Column('withheld_labels', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('consent_id', name=op.f('pk_consent_terms')),
    )
    with op.batch_alter_table('consent_terms', schema=None) as batch_op:
        batch_op.create_index('ix_consent_terms_patient', ['network_id', 'patient_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consent_terms', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_terms_patient')
    op.drop_table('consent_terms')
    with op.batch_alter_table('care_team_participants', schema=None) as batch_op:
        batch_op.drop_index('ix_care_team_participants_patient')
    op.drop_table('care_team_participants')
