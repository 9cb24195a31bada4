"""Alembic environment for the share service (run through services.kit.migrate)."""

from services.kit.alembic_env import run_migrations
from services.share.models import ShareBase

run_migrations(ShareBase.metadata)
