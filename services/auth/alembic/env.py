"""Alembic environment for the auth service (run through services.kit.migrate)."""

from services.auth.models import AuthBase
from services.kit.alembic_env import run_migrations

run_migrations(AuthBase.metadata)
