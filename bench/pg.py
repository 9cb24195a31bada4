"""A PostgreSQL cluster of the benchmark's own, configured as deploy/postgresql/renkei.conf says.

Measuring against the machine's shared PostgreSQL would measure its settings (128 MB of shared buffers on a fresh
Debian install) instead of a deployment's, and would disturb whatever else uses it. Debian's server binaries
(package postgresql) start a throwaway cluster on a free loopback port; it is removed afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from bench.common import free_port

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "postgresql" / "renkei.conf"
# The postmaster's pid of each running own cluster, by the URL own_postgres yielded: its CPU time is the database's.
POSTMASTERS: dict[str, int] = {}


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (or use --pg URL)")
    return found


def recycle_wal(url: str) -> None:
    """Give a fresh cluster the recycled WAL segments a running server has (min_wal_size of them: renkei.conf).

    A fresh cluster has none: each segment its writes need is created, zero-filled and synced by the commit that
    needs it, while every other commit waits — at the sheet benchmark's rates a stall of 30-70 ms every two
    seconds, gone from a server once its checkpoints have recycled that much WAL. So: fill that many segments
    with a switch each, then a checkpoint recycles them all (about 2.5 s for 2 GB).
    """
    with psycopg.connect(url, autocommit=True) as connection:
        # pg_settings' units: min_wal_size in MB, wal_segment_size in bytes
        sizes = connection.execute(
            "SELECT (SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'min_wal_size'),"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')").fetchone()
        assert sizes is not None
        wanted, segment = sizes
        connection.execute("CREATE TABLE renkei_wal_filler (x int)")
        for _ in range(wanted // segment):
            connection.execute("INSERT INTO renkei_wal_filler VALUES (1)")  # a switch needs WAL since the last
            connection.execute("SELECT pg_switch_wal()")
        connection.execute("DROP TABLE renkei_wal_filler")
        connection.execute("CHECKPOINT")


@contextmanager
def own_postgres() -> Iterator[str]:
    """Yields the URL of the admin database of a fresh cluster (trust authentication, loopback only)."""
    root = Path(tempfile.mkdtemp(prefix="renkei-bench-pg-"))
    data, port = root / "data", free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_postgres, _bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude '{CONFIG}'\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{root}'\n")
            # For profiling a run, e.g. "shared_preload_libraries='pg_stat_statements'": never set by default.
            conf.write(os.environ.get("RENKEI_BENCH_PG_CONF", "").replace(";", "\n") + "\n")
        subprocess.run([*as_postgres, _bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start"],
                       check=True, capture_output=True)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        POSTMASTERS[url] = int((data / "postmaster.pid").read_text().split()[0])
        recycle_wal(url)
        yield url
        POSTMASTERS.pop(url, None)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_postgres, _bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
