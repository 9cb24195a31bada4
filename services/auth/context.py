"""Everything the identity service needs at run time, built once per application."""

from __future__ import annotations

from dataclasses import dataclass

from services.auth.credentials.passwords import Passwords
from services.auth.credentials.throttle import LoginThrottle
from services.auth.signing.service import Signer
from services.kit.db import Database
from services.kit.secrets import SecretBox, load_or_create_key
from services.kit.settings import Settings


@dataclass
class AuthContext:
    settings: Settings
    db: Database
    box: SecretBox
    passwords: Passwords
    signer: Signer
    throttle: LoginThrottle

    @classmethod
    def build(cls, settings: Settings) -> AuthContext:
        master = load_or_create_key(settings.resolved_key_dir / "auth-master.key", settings.auth_master_key)
        box = SecretBox(master)
        return cls(
            settings=settings,
            db=Database(settings.resolved_auth_database_url),
            box=box,
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            signer=Signer(settings, box),
            throttle=LoginThrottle(settings),
        )
