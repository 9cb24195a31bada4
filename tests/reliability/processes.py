"""Real processes for the reliability suite: a PostgreSQL cluster, a Redis server and `renkei serve`, each a test's
own, on free loopback ports, that a test may stop, kill and start again. The shared PostgreSQL (5432) and Redis
(6379) of the rest of the suite are never touched.

The API (others import it; keep it small):

- ``require_binaries()`` — skip with a visible reason when initdb/pg_ctl or redis-server are missing (fail in CI).
- ``Postgres(root)`` — ``start()``, ``stop(mode)`` (``"fast"`` or ``"immediate"``: a crash, WAL replay at the next
  start), ``create_database(name) -> url``, ``url(database)``, ``sql(database, query, **params) -> rows``,
  ``remove()``.
- ``Redis()`` — ``start()``, ``kill()`` (SIGKILL), ``url``, ``remove()``.
- ``Server(env, port, log)`` — `python -m services.cli serve` (one process: migrates, then serves auth and share);
  ``start() -> seconds until /readyz answered 200``, ``kill()`` (SIGKILL), ``stop()`` (SIGTERM), ``base``, ``ws``.
- ``server_env(data_dir, public_url, auth_url, share_url, redis_url=None, **settings)`` — the RENKEI_* variables.
- ``Directory(env)`` — ``make_network(...)`` as tests/infra.py does it, against a `renkei serve` process of
  another process: bootstraps through the identity service's own code on the same databases and key files.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import require
from tests.infra import free_port
from tests.planted import keep_logs, log_path, register_log

REPO = Path(__file__).resolve().parents[2]


def _bin(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                      None)


def missing_binaries() -> str | None:
    """None when PostgreSQL's server binaries and redis-server are here, else what is missing."""
    missing = [name for name in ("initdb", "pg_ctl", "redis-server") if _bin(name) is None]
    if missing:
        return f"reliability tests start their own servers; not found: {', '.join(missing)}"
    return None


def require_binaries() -> None:
    """Skip with the reason outside CI; fail in CI (CI=true), where these tests must run."""
    require(missing_binaries(), "PostgreSQL/Redis server binaries")


def _wait_for(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):  # not up yet
            if check():
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


class Postgres:
    """A PostgreSQL cluster in a fresh directory (trust authentication, loopback only, fsync on)."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and PostgreSQL refuses to run as root.
        self.root = Path(tempfile.mkdtemp(prefix="renkei-reliability-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.as_postgres, str(_bin("initdb")), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "shared_buffers = 32MB\nmax_connections = 100\nfsync = on\nsynchronous_commit = on\n")

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, str(_bin("pg_ctl")), "-D", str(self.data), "-l",
                        str(self.root / "postgres.log"), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> float:
        """Start (after an immediate stop: replay the WAL); the seconds it took."""
        started = time.monotonic()
        self._ctl("-w", "-t", "90", "start")
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: every server process quits at once, as in a crash."""
        self._ctl("-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def sql(self, database: str, query: str, **params: Any) -> list[Any]:
        """The rows of one query, on a connection of its own (closed at once)."""
        engine = create_engine(self.url(database), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(query), params))
        finally:
            engine.dispose()

    def remove(self) -> None:
        if self.running:
            subprocess.run([*self.as_postgres, str(_bin("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, check=False)
        keep_logs(self.root, "postgres")  # the server's own log is searched for planted strings too
        shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        import redis

        started = time.monotonic()
        with log_path("redis").open("ab") as log:
            self.process = subprocess.Popen(
                [str(_bin("redis-server")), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: redis.Redis.from_url(self.url, socket_connect_timeout=1).ping(), 20, "redis-server")
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def remove(self) -> None:
        self.kill()


def server_env(data_dir: str, public_url: str, auth_url: str, share_url: str, redis_url: str | None = None,
               **settings: Any) -> dict[str, str]:
    """The environment of a `renkei serve` process: cheap password hashing, no rate limits (the load comes from one
    address), ``settings`` as further RENKEI_* variables (``event_poll_seconds=0.5`` → RENKEI_EVENT_POLL_SECONDS)."""
    env = {**os.environ, "RENKEI_DATA_DIR": data_dir, "RENKEI_PUBLIC_URL": public_url,
           "RENKEI_AUTH_DATABASE_URL": auth_url, "RENKEI_SHARE_DATABASE_URL": share_url,
           "RENKEI_ARGON2_MEMORY_KIB": "1024", "RENKEI_ARGON2_TIME_COST": "1", "RENKEI_ARGON2_PARALLELISM": "1",
           "RENKEI_RATE_LIMIT_PER_SECOND": "0", "RENKEI_RATE_LIMIT_ADDRESS_PER_SECOND": "0",
           "RENKEI_JWKS_MIN_REFRESH_SECONDS": "0.5", "RENKEI_ACCESS_LOG": "false"}
    env.pop("RENKEI_REDIS_URL", None)
    if redis_url:
        env["RENKEI_REDIS_URL"] = redis_url
    env.update({f"RENKEI_{key.upper()}": str(value) for key, value in settings.items()})
    return env


class Server:
    """`python -m services.cli serve` in a process of its own (one worker: a SIGKILL takes everything down)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        register_log(log)  # searched for planted patient strings and secrets at the end of the run
        self.base = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> float:
        """Start and wait until /readyz says ready; the seconds that took."""
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(self.port)],
                                            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"renkei serve exited with {process.returncode}; see {self.log}")
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200

        try:
            _wait_for(ready, timeout, f"renkei serve on port {self.port} (log: {self.log})")
        except SystemExit as error:
            raise RuntimeError(str(error)) from None
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class Directory:
    """Networks and users for servers of other processes: the bootstrap of tests/infra.py, run here on the same
    databases and key files; logins go over HTTP to ``base``."""

    def __init__(self, env: dict[str, str], base: str) -> None:
        from services.auth.context import AuthContext
        from services.kit.settings import Settings

        settings = Settings(data_dir=Path(env["RENKEI_DATA_DIR"]), public_url=env["RENKEI_PUBLIC_URL"],
                            auth_database_url=env["RENKEI_AUTH_DATABASE_URL"],
                            share_database_url=env["RENKEI_SHARE_DATABASE_URL"],
                            argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)
        self.auth = AuthContext.build(settings)
        self.base_url = base

    def client(self, address: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def make_network(self, **kwargs: Any) -> Any:
        """tests.infra.make_network, on this directory (a Network whose ``login`` goes to ``base``)."""
        from tests.infra import make_network

        try:
            return make_network(self, **kwargs)  # type: ignore[arg-type]
        finally:
            self.auth.db.dispose()
