"""keep resource bodies inline and uncompressed on PostgreSQL

A sealed body is ciphertext: compressing it gains nothing, and PostgreSQL tries on every row above 2 kB. And
moving a typical 3-8 kB sheet out of line into the TOAST table costs every read an extra index lookup. So
bodies stay in the row up to a page, and larger ones go out of line without a compression attempt.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no TOAST: rows are stored as they are
    op.execute("ALTER TABLE resource_versions ALTER COLUMN body SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE resource_versions SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE resource_versions RESET (toast_tuple_target)")
    op.execute("ALTER TABLE resource_versions ALTER COLUMN body SET STORAGE EXTENDED")
