"""search_index's date index holds date rows only

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A shared discharge sheet writes about 28 search_index rows, of which two or three are dates; the date index held
# every row, and its entries were a tenth of the sheet's WAL (bench/RESULTS.md, "Sheets, third round"). Date
# searches say date_low IS NOT NULL (services/share/store/search.py), so the partial index serves them.
_COLUMNS = ['network_id', 'resource_type', 'param', 'date_low']
_DATES = sa.text('date_low IS NOT NULL')


def upgrade() -> None:
    with op.batch_alter_table('search_index', schema=None) as batch_op:
        batch_op.drop_index('ix_search_index_dates')
        batch_op.create_index('ix_search_index_dates', _COLUMNS, unique=False, postgresql_where=_DATES,
                              sqlite_where=_DATES)


def downgrade() -> None:
    with op.batch_alter_table('search_index', schema=None) as batch_op:
        batch_op.drop_index('ix_search_index_dates', postgresql_where=_DATES, sqlite_where=_DATES)
        batch_op.create_index('ix_search_index_dates', _COLUMNS, unique=False)
