"""Alembic environment for the share service (run through services.kit.migrate)."""

from alembic import context

import services.share.models as models

config = context.config
target_metadata = models.ShareBase.metadata
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
