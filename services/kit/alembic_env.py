"""The body of both services' Alembic ``env.py``: migrate the engine handed over by ``services.kit.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def run_migrations(target_metadata: MetaData) -> None:
    config = context.config
    engine = config.attributes.get("engine")
    if engine is None:
        raise RuntimeError("run migrations with 'renkei migrate' (services.kit.migrate), which supplies the engine")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=config.get_main_option("version_table"),
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
