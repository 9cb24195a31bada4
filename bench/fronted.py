"""A benchmark server run as deployed: the multi-process topology of scripts/topology.sh instead of one process.

``--topology`` in bench/sheets.py, push.py, access.py and store.py measures through it. What runs (scripts/topology.py):
nginx terminating TLS in front of one identity-service process (``renkei serve --service auth``) and two
share-service processes (``--service share``, one worker each: the machine has two cores), least-connection
balanced, with a Redis of the topology's own carrying the wake-ups between them. The databases and the data
directory (key files) are the scene's, seeded by the benchmark before the topology starts.

The clients speak TLS to nginx (``cafile``: the topology's self-signed certificate), and a server's CPU and memory
are those of every process of the deployment: nginx, the three service processes and Redis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_topology
from bench.store import Server, tree_rss_mb
from services.kit.settings import Settings

# What the topology sets itself: the scene's databases and key files, its own Redis.
_TOPOLOGY_OWNS = ("RENKEI_DATA_DIR", "RENKEI_AUTH_DATABASE_URL", "RENKEI_SHARE_DATABASE_URL", "RENKEI_REDIS_URL")
SERVERS = Path(__file__).with_name("servers.py")


class Fronted(Server):
    """``mode`` (bench/servers.py's name of an application variant) behind nginx, as two share processes."""

    def __init__(self, mode: str, data_dir: Path, auth_url: str | None, share_url: str, workers: int) -> None:
        super().__init__(mode, data_dir, auth_url, share_url, workers)
        if auth_url is None:
            raise ValueError("the topology runs the identity service: it needs an auth database")
        command = None if mode == "renkei" else self._variant
        self.topology = load_topology().Topology(databases=(auth_url, share_url), data_dir=data_dir,
                                                 share_command=command, cheap_hashing=False)
        self.base = self.topology.base_url
        self.env["RENKEI_PUBLIC_URL"] = self.base
        self.settings = Settings(data_dir=data_dir, share_database_url=share_url, auth_database_url=auth_url,
                                 public_url=self.base)

    def _variant(self, port: int) -> list[str]:
        """A share process serving bench/servers.py's variant ``mode`` (one worker) instead of `renkei serve`."""
        return [sys.executable, str(SERVERS), self.mode, str(port), "1"]

    def baseline(self, mode: str) -> Server:
        """The same as Server.baseline, behind a topology of its own; the floors (bare, pushbare) stay one direct
        process: they stand for what the framework alone does, and pushbare's in-process fan-out needs one."""
        if mode in ("bare", "pushbare"):
            return super().baseline(mode)
        found = Fronted(mode, Path(self.env["RENKEI_DATA_DIR"]), self.env.get("RENKEI_AUTH_DATABASE_URL"),
                        self.env["RENKEI_SHARE_DATABASE_URL"], self.workers)
        found.env["RENKEI_PUBLIC_URL"] = self.base  # the primary's identity service issues the tokens
        found.env["RENKEI_AUDIT_CHAIN_INTERVAL_SECONDS"] = "0"
        return found

    def start(self) -> Server:
        # What the benchmark set in this server's environment beyond the machine's own (token lifetime, the issuer,
        # cheap hashing for set-up logins …) reaches every process of the topology.
        self.topology.extra_env = {key: value for key, value in self.env.items()
                                   if os.environ.get(key) != value and key not in _TOPOLOGY_OWNS}
        self.topology.start()
        assert self.topology.cert is not None
        self.cafile = str(self.topology.cert)
        return self

    def roots(self) -> list[int]:
        return [process.pid for process in self.topology.processes.values()]

    def rss_parts(self) -> dict[str, float]:
        """By process of the topology: nginx, auth, share-a, share-b, redis."""
        return {name: tree_rss_mb(process.pid) for name, process in self.topology.processes.items()}

    def stop(self) -> None:
        self.topology.stop()

