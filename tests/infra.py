"""Test infrastructure: real databases (SQLite and PostgreSQL), a real server on a free port, factories.

Every test talks HTTP to a live uvicorn server; the share service fetches the identity service's JWKS over that
same HTTP. Tests isolate themselves by creating their own network (the product's own isolation unit) with
unique ids, so one server per backend serves the whole session.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from services.app import create_app
from services.auth.context import AuthContext
from services.auth.directory.schemas import BootstrapFile
from services.auth.directory.service import Directory
from services.kit.settings import Settings
from tests.planted import register_secret

PG_ADMIN_URL = os.environ.get("RENKEI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RENKEI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSWORD = "correct horse battery staple"
register_secret("test password", PASSWORD)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(error).__name__}"
    return None


def redis_available() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as error:
        return f"Redis not reachable at {REDIS_URL}: {type(error).__name__}"
    return None


class PostgresDatabases:
    """Databases created for this test run only, so concurrent runs never collide."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def create(self, label: str) -> str:
        name = f"renkei_test_{label}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in self.names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def settings_for_tests(tmp_dir: str, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_dir,
        "public_url": f"http://127.0.0.1:{port}",
        # Cheap hashing keeps the suite fast; production cost is measured in bench/auth.py.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "argon2_parallelism": 1,
        "jwks_min_refresh_seconds": 0.5,
        # The suite drives a few users hard (the access matrix: thousands of requests each, from fake forwarded
        # addresses); the limits themselves are tested with low ones in tests/test_limits.py.
        "rate_limit_per_second": 0,
        "rate_limit_address_per_second": 0,
        **overrides,
    }
    return Settings(**values)


class LiveServer:
    """uvicorn serving the combined app in a background thread."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.app: FastAPI = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=True,
                                forwarded_allow_ips="127.0.0.1", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def auth(self) -> AuthContext:
        ctx: AuthContext = self.app.state.auth
        return ctx

    def client(self, address: str | None = None) -> httpx.Client:
        """An HTTP client; ``address`` poses as a distinct client address (X-Forwarded-For from loopback)."""
        headers = {"X-Forwarded-For": address or fake_address()}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def fake_address() -> str:
    # Documentation range (RFC 5737): only ever a header value, never a destination.
    raw = uuid.uuid4().int
    return f"198.51.{(raw >> 8) % 256}.{raw % 256}"


@dataclass
class Network:
    """A network created for one test, with helpers to act as its users."""

    server: LiveServer
    id: str
    orgs: dict[str, str]
    users: dict[str, dict[str, Any]]
    clients: dict[str, Any] = field(default_factory=dict)

    def user(self, role: str) -> dict[str, Any]:
        return self.users[role]

    def login(self, role: str, http: httpx.Client | None = None, device_id: str | None = None) -> dict[str, Any]:
        """Full login over HTTP (second factor included) → token response."""
        user = self.users[role]
        http = http or self.server.client()
        body: dict[str, Any] = {"username": user["username"], "password": PASSWORD}
        if device_id:
            body["device_id"] = device_id
        answer = http.post("/auth/login", json=body)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        if data.get("mfa_required"):
            code = next_totp_code(user)
            answer = http.post("/auth/login/mfa", json={"mfa_token": data["mfa_token"], "code": code})
            assert answer.status_code == 200, answer.text
            data = answer.json()
        register_secret("access token", data.get("access_token"))
        register_secret("refresh token", data.get("refresh_token"))
        return data

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.login(role)['access_token']}"}


def next_totp_code(user: dict[str, Any]) -> str:
    """A code the server has not yet seen for this user: replay protection means one login per time step, so
    successive logins in a test use the current step, then the next one (inside the accepted window)."""
    totp = pyotp.TOTP(user["totp_secret"])
    step = int(time.time() // 30)
    used = user.setdefault("_used_steps", set())
    for candidate in (step, step + 1):
        if candidate not in used:
            used.add(candidate)
            return str(totp.generate_otp(candidate))
    time.sleep(30 - time.time() % 30 + 0.1)
    return next_totp_code(user)


ROLES = {
    # role: (organisation key, profession, admin, has TOTP)
    "physician": ("clinic", "physician", False, True),
    "nurse": ("station", "nurse", False, True),
    "care_manager": ("office", "care-manager", False, False),
    "clerk": ("clinic", "clerk", False, False),
    "admin": ("clinic", "coordinator", True, False),
}


def make_network(server: LiveServer, *, mfa_required: bool = False, clients: list[dict[str, Any]] | None = None,
                 extra_users: list[dict[str, Any]] | None = None, settings: dict[str, Any] | None = None) -> Network:
    """Create a fresh network through the bootstrap service (the same code path as `renkei admin bootstrap`)."""
    tag = uuid.uuid4().hex[:8]
    orgs = {"clinic": f"clinic-{tag}", "station": f"station-{tag}", "office": f"office-{tag}",
            "hospital": f"hospital-{tag}"}
    users: dict[str, dict[str, Any]] = {}
    for role, (org, profession, admin, has_totp) in ROLES.items():
        users[role] = {"id": f"{role.replace('_', '-')}-{tag}", "username": f"{role}-{tag}", "password": PASSWORD,
                       "organization": orgs[org], "profession": profession, "name": f"テスト {role}",
                       "admin": admin}
        if has_totp:
            users[role]["totp_secret"] = pyotp.random_base32()
            register_secret("TOTP secret", users[role]["totp_secret"])
    for extra in extra_users or []:  # an "organization" may be one of the keys above (clinic, hospital …)
        extra = dict(extra)
        role = extra.pop("role")
        users[role] = {"id": f"{role}-{tag}", "username": f"{role}-{tag}", "password": PASSWORD,
                       "name": f"テスト {role}", "admin": False, **extra}
        users[role]["organization"] = orgs.get(users[role]["organization"], users[role]["organization"])
    data = {
        "network": {"id": f"net-{tag}", "name": f"テスト連携ネットワーク {tag}",
                    "settings": {"mfa_required": mfa_required, **(settings or {})}},
        "organizations": [
            {"id": orgs["clinic"], "name": "テスト在宅クリニック", "type": "clinic"},
            {"id": orgs["station"], "name": "テスト訪問看護ステーション", "type": "visiting-nurse-station"},
            {"id": orgs["office"], "name": "テスト居宅介護支援事業所", "type": "home-care-support-office"},
            {"id": orgs["hospital"], "name": "テスト病院", "type": "hospital"},
        ],
        "users": [{k: v for k, v in u.items() if not k.startswith("_")} for u in users.values()],
        "clients": [{**c, "organization": orgs[c["organization"]]} for c in clients or []],
    }
    bootstrap(server, data)
    return Network(server=server, id=data["network"]["id"], orgs=orgs, users=users)


def bootstrap(server: LiveServer, data: dict[str, Any]) -> Any:
    ctx = server.auth
    with ctx.db.transaction() as db:
        return Directory(ctx).bootstrap(db, BootstrapFile.model_validate(data))


def raw_database_bytes(path: str) -> bytes:
    """The bytes of an SQLite database and its WAL, read by a child process.

    Opening and closing a database file in the server's own process would drop SQLite's POSIX locks on it (they
    belong to the process, and any close releases them), breaking the live server's locking; `cat` reads it
    from outside.
    """
    import subprocess
    from pathlib import Path

    files = [p for p in (Path(path), Path(path + "-wal")) if p.exists()]
    return subprocess.run(["cat", *map(str, files)], capture_output=True, check=True).stdout
