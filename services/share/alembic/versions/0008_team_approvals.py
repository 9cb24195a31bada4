"""versions record their author's organisation and a sheet's section layout; care-team joining by invitation

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('author_organization', sa.String(length=64), server_default='',
                                      nullable=False))
        batch_op.add_column(sa.Column('layout', sa.LargeBinary(), nullable=True))
    with op.batch_alter_table('care_team_participants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approved', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_table(
        'team_invitations',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('care_team_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('member_id', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=64), nullable=False),
        sa.Column('invited_by', sa.String(length=200), nullable=False),
        sa.Column('invited_at', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('needs', sa.JSON(), nullable=False),
        sa.Column('given', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_team_invitations')),
    )
    with op.batch_alter_table('team_invitations', schema=None) as batch_op:
        batch_op.create_index('ix_team_invitations_member', ['care_team_id', 'kind', 'member_id'], unique=True)
        batch_op.create_index('ix_team_invitations_network', ['network_id', 'member_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('team_invitations', schema=None) as batch_op:
        batch_op.drop_index('ix_team_invitations_network')
        batch_op.drop_index('ix_team_invitations_member')
    op.drop_table('team_invitations')
    with op.batch_alter_table('care_team_participants', schema=None) as batch_op:
        batch_op.drop_column('approved')
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.drop_column('layout')
        batch_op.drop_column('author_organization')
