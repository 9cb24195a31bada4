"""The identity service's declarative base; its tables live in their own database (or schema)."""

from sqlalchemy.orm import DeclarativeBase

from services.kit.db import new_metadata


class AuthBase(DeclarativeBase):
    metadata = new_metadata()
