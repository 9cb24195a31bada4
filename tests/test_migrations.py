"""The Alembic migrations produce exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from services.auth.models import AuthBase
from services.kit.db import make_engine
from services.share.models import ShareBase
from tests.infra import LiveServer

METADATA = {"auth": AuthBase.metadata, "share": ShareBase.metadata}


@pytest.mark.parametrize("service", ["auth", "share"])
def test_migrations_match_models(server: LiveServer, service: str) -> None:
    url = getattr(server.settings, f"resolved_{service}_database_url")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": f"alembic_version_{service}"}
            )
            differences = compare_metadata(context, METADATA[service])
            assert differences == [], f"{service}: migrations and models differ: {differences}"
            version = context.get_current_revision()
            assert version is not None
    finally:
        engine.dispose()


def test_every_model_table_exists(server: LiveServer) -> None:
    engine = make_engine(server.settings.resolved_auth_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    declared = set(METADATA["auth"].tables)
    assert declared and declared <= tables


def test_the_services_share_no_tables() -> None:
    assert not set(AuthBase.metadata.tables) & set(ShareBase.metadata.tables)
    assert isinstance(ShareBase.metadata, MetaData)
