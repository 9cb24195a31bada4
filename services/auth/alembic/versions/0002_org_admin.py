"""users.org_admin: the organisation administrator (token scope ``org-admin``)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default fills existing rows (nobody is an organisation administrator until made one) and lets
    # SQLite add a NOT NULL column in place. Not batched: Alembic's batch mode rebuilds ``users`` for an expression
    # default, and dropping the old table under foreign_keys=ON cascades into sessions, devices and recovery codes.
    op.add_column("users", sa.Column("org_admin", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    # Not batched either: SQLite (3.35+) drops a plain column in place.
    op.drop_column("users", "org_admin")
