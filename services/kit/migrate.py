"""Alembic, driven from code: each service has its own migration history and version table."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

SERVICES = ("auth", "share")
_ROOT = Path(__file__).resolve().parents[1]


def alembic_config(service: str, engine: Engine | None = None) -> Config:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    config = Config()
    config.set_main_option("script_location", str(_ROOT / service / "alembic"))
    config.set_main_option("version_table", f"alembic_version_{service}")
    config.attributes["engine"] = engine
    return config


def upgrade(service: str, engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, engine), revision)
