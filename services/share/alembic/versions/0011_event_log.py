"""the event log: every committed write of a resource appends an event, by a trigger in the writing transaction;
and each member's read position in each patient's team thread

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 20:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.kit.db

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A sheet's stored layout ends with b',"d":1}' (hex 2c2264223a317d) while it is a draft (services/share/access/
# layout.py DRAFT_MARK); the event records that, for the access decision at delivery.

# PostgreSQL: one INSERT per statement (a sheet's Tasks are written in the sheet's statement), from the statement's
# new rows.
_POSTGRES = """
CREATE FUNCTION renkei_event_for_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_log (network_id, patient_id, resource_type, resource_id, version, kind,
                           author_organization, draft, recorded)
    SELECT n.network_id, n.patient_id, n.resource_type, n.resource_id, n.version,
           CASE WHEN n.deleted THEN 'deleted' WHEN n.version = 1 THEN 'created' ELSE 'updated' END,
           n.author_organization,
           coalesce(length(n.layout) >= 7
                    AND substring(n.layout from length(n.layout) - 6) = '\\x2c2264223a317d'::bytea, false),
           n.last_updated
    FROM written n;
    RETURN NULL;
END $$;
CREATE TRIGGER resource_versions_event AFTER INSERT ON resource_versions
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION renkei_event_for_versions();
"""

_SQLITE = """
CREATE TRIGGER resource_versions_event AFTER INSERT ON resource_versions BEGIN
    INSERT INTO event_log (network_id, patient_id, resource_type, resource_id, version, kind,
                           author_organization, draft, recorded)
    VALUES (NEW.network_id, NEW.patient_id, NEW.resource_type, NEW.resource_id, NEW.version,
            CASE WHEN NEW.deleted THEN 'deleted' WHEN NEW.version = 1 THEN 'created' ELSE 'updated' END,
            NEW.author_organization,
            coalesce(substr(NEW.layout, -7) = X'2c2264223a317d', 0),
            NEW.last_updated);
END
"""


def upgrade() -> None:
    op.create_table(
        'event_log',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=True),
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('resource_type', sa.String(length=64), nullable=False),
        sa.Column('resource_id', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('author_organization', sa.String(length=64), nullable=False),
        sa.Column('draft', sa.Boolean(), nullable=False),
        sa.Column('recorded', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_log')),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table('event_log', schema=None) as batch_op:
        batch_op.create_index('ix_event_log_seq', ['seq'], unique=True, postgresql_where=sa.text('seq IS NOT NULL'),
                              sqlite_where=sa.text('seq IS NOT NULL'))
        batch_op.create_index('ix_event_log_unsequenced', ['id'], unique=False,
                              postgresql_where=sa.text('seq IS NULL'), sqlite_where=sa.text('seq IS NULL'))
    op.execute(_POSTGRES if op.get_bind().dialect.name == 'postgresql' else _SQLITE)
    op.create_table(
        'read_positions',
        sa.Column('network_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('reader', sa.String(length=200), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('read_at', services.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('network_id', 'patient_id', 'reader', name=op.f('pk_read_positions')),
    )


def downgrade() -> None:
    op.drop_table('read_positions')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER resource_versions_event ON resource_versions")
        op.execute("DROP FUNCTION renkei_event_for_versions()")
    else:
        op.execute("DROP TRIGGER resource_versions_event")
    with op.batch_alter_table('event_log', schema=None) as batch_op:
        batch_op.drop_index('ix_event_log_unsequenced', postgresql_where=sa.text('seq IS NULL'),
                            sqlite_where=sa.text('seq IS NULL'))
        batch_op.drop_index('ix_event_log_seq', postgresql_where=sa.text('seq IS NOT NULL'),
                            sqlite_where=sa.text('seq IS NOT NULL'))
    op.drop_table('event_log')
