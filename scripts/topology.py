"""The production topology on this machine: nginx (TLS) in front of one identity-service process and two
share-service processes, on PostgreSQL and Redis — real processes, as deploy/systemd runs them.

    scripts/topology.sh up          # start it, print the URLs, run until Ctrl-C (then tear everything down)
    scripts/topology.sh check       # start it, check /readyz through nginx and each process, tear it down

What it runs, all on loopback ports chosen at start, in a working directory of its own (removed at the end):
- nginx from Debian's packages (installed with apt-get when missing: `nginx-light`, else `nginx`; needs root),
  with a configuration generated from deploy/nginx/renkei.conf: the same server block, its upstreams on this
  run's ports, TLS with a self-signed certificate made at start (for 127.0.0.1 and localhost), logs and temporary
  files in the working directory, no port-80 redirect. Two more TLS ports ("doors") carry the same server block
  pinned to one share instance each, so that a test can reach a given instance through nginx.
- `renkei serve --service auth` and two `renkei serve --service share` (each one process, or --workers N), the
  share processes fetching the identity service's keys from its loopback port (RENKEI_SHARE_JWKS_URL).
- PostgreSQL: two databases of its own (auth, share) on the cluster at $RENKEI_TEST_PG_URL (default
  postgresql+psycopg://postgres@127.0.0.1:5432/postgres), dropped at the end.
- Redis: a redis-server of its own on a free port (no persistence).

The Python API (tests/reliability/test_topology.py, bench/soak.py):

    with Topology(env={"RENKEI_OUTBOUND_ALLOW_LOOPBACK": "true"}) as topology:
        topology.client().get("/readyz")
"""

# ruff: noqa: S603, S607 - the commands run are this script's own (apt-get, nginx, redis-server, renkei)

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NGINX_CONF = ROOT / "deploy" / "nginx" / "renkei.conf"
PG_ADMIN_URL = os.environ.get("RENKEI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NGINX_PACKAGES = ("nginx-light", "nginx")


class Unavailable(RuntimeError):
    """Something the topology needs (nginx, PostgreSQL, redis-server) is missing and cannot be had."""


def say(message: str) -> None:
    print(f"[topology] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# nginx -----------------------------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    return os.environ.get("RENKEI_TEST_NGINX") or shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def ensure_nginx() -> str:
    """nginx's path, installing Debian's package when it is missing (root and apt-get needed)."""
    found = nginx_binary()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise Unavailable("nginx is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise Unavailable("nginx is not installed and installing it needs root (apt-get install nginx-light)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    running_before = Path("/run/nginx.pid").exists()
    # Another apt-get (another job on this machine) may hold the lock for a while: wait for it.
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends"]
    for attempt in ("installed lists", "after apt-get update"):
        for package in NGINX_PACKAGES:
            say(f"installing {package} ({attempt})")
            done = subprocess.run([*install, package], env=env, capture_output=True, text=True, check=False)
            if done.returncode == 0 and nginx_binary():
                if not running_before:
                    _stop_packaged_nginx()
                return str(nginx_binary())
            say(f"apt-get install {package} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        if attempt == "installed lists":
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], env=env, capture_output=True,
                           check=False)
    raise Unavailable("nginx could not be installed with apt-get (nginx-light, nginx)")


def _stop_packaged_nginx() -> None:
    """The package's post-install may have started the system's nginx (port 80): this topology runs its own, so the
    one the installation started (and only that one) is stopped."""
    pid_file = Path("/run/nginx.pid")
    if pid_file.exists():
        binary = nginx_binary()
        if binary:
            subprocess.run([binary, "-s", "quit"], capture_output=True, check=False)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key (ECDSA P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renkei topology (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _block(conf: str, start: str) -> tuple[int, int]:
    """The span of the top-level block that begins with ``start`` (up to its closing brace at column 0)."""
    begin = conf.index(start)
    end = conf.index("\n}\n", begin) + 3
    return begin, end


def nginx_config(*, work: Path, port: int, doors: list[int], auth_port: int, share_ports: list[int],
                 cert: Path, key: Path) -> str:
    """deploy/nginx/renkei.conf for this run: its http-context text inside a minimal nginx.conf."""
    conf = NGINX_CONF.read_text(encoding="utf-8")
    begin, end = _block(conf, "server {\n    listen 80;")
    conf = conf[:begin] + conf[end:]  # the ACME / redirect server on port 80
    conf = conf.replace("server 127.0.0.1:8100 ", f"server 127.0.0.1:{auth_port} ")
    conf = conf.replace("server 127.0.0.1:8101 ", f"server 127.0.0.1:{share_ports[0]} ")
    conf = conf.replace("server 127.0.0.1:8102 ", f"server 127.0.0.1:{share_ports[1]} ")
    conf = conf.replace("/etc/ssl/renkei/fullchain.pem", str(cert)).replace("/etc/ssl/renkei/privkey.pem", str(key))
    conf = conf.replace("/var/log/nginx/renkei/access.log", str(work / "nginx-access.log"))
    conf = re.sub(r"^    listen \[::\]:443 ssl http2;\n", "", conf, flags=re.MULTILINE)
    begin, end = _block(conf, "server {\n    listen 443")
    server = conf[begin:end]
    pinned = []
    for index, (door, share_port) in enumerate(zip(doors, share_ports, strict=True)):
        name = f"renkei_share_{'ab'[index]}"
        pinned.append(f"upstream {name} {{\n    server 127.0.0.1:{share_port};\n    keepalive 16;\n"
                      "    keepalive_timeout 4s;\n}\n\n"
                      + server.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{door} ssl http2;")
                      .replace("ssl_session_cache shared:renkei_tls:10m;", "")
                      .replace("http://renkei_share;", f"http://{name};"))
    conf = conf.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;") + "\n" + "\n".join(pinned)
    temp = "\n".join(f"    {kind}_temp_path {work / 'nginx-temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # its workers read the run's files (mode 0700)
    indented = "\n".join(f"    {line}" if line else "" for line in conf.splitlines())
    return (f"{user}worker_processes 1;\npid {work / 'nginx.pid'};\nerror_log {work / 'nginx-error.log'} warn;\n"
            f"events {{\n    worker_connections 4096;\n}}\n"
            f"http {{\n    default_type application/octet-stream;\n{temp}\n{indented}\n}}\n")


# The topology ----------------------------------------------------------------------------------------------


class Topology:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; every process, file and database it made goes."""

    def __init__(self, *, env: dict[str, str] | None = None, workers: int = 1, cheap_hashing: bool = True,
                 keep: bool = False, databases: tuple[str, str] | None = None, data_dir: Path | None = None,
                 share_command: Callable[[int], list[str]] | None = None) -> None:
        """``databases`` (auth URL, share URL) and ``data_dir``: run on these, made and kept by the caller (the
        benchmarks, which seed them first), instead of databases and a data directory of the topology's own.
        ``share_command``: the command of a share process on a port, instead of `renkei serve --service share`
        (bench/fronted.py runs a benchmark's baseline variant so)."""
        self.share_command = share_command
        self.extra_env = dict(env or {})
        self.given_databases = databases
        self.data_dir = data_dir
        self.workers = workers
        self.cheap_hashing = cheap_hashing
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="renkei-topology-"))
        self.port, self.auth_port = free_port(), free_port()
        self.share_ports = [free_port(), free_port()]
        self.doors = [free_port(), free_port()]
        self.redis_port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.databases: list[str] = []
        self.timings: dict[str, float] = {}
        self.cert: Path | None = None
        self.tag = uuid.uuid4().hex[:10]
        self.began = time.monotonic()

    # URLs
    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def door_url(self, instance: int) -> str:
        """nginx's port pinned to share instance 0 (A) or 1 (B): the same server block, one upstream."""
        return f"https://127.0.0.1:{self.doors[instance]}"

    def ws_url(self, instance: int | None = None) -> str:
        base = self.base_url if instance is None else self.door_url(instance)
        return base.replace("https://", "wss://") + "/ws"

    def ssl_context(self) -> ssl.SSLContext:
        assert self.cert is not None
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, base_url: str | None = None, **options: Any) -> Any:
        import httpx

        return httpx.Client(base_url=base_url or self.base_url, verify=self.ssl_context(), timeout=30, **options)

    # The environment every Renkei process of the topology reads
    @property
    def env(self) -> dict[str, str]:
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        auth_url, share_url = self.given_databases or (f"{base}/renkei_topology_auth_{self.tag}",
                                                       f"{base}/renkei_topology_share_{self.tag}")
        values = {
            "RENKEI_DATA_DIR": str(self.data_dir or self.work / "data"),
            "RENKEI_PUBLIC_URL": self.base_url,
            "RENKEI_AUTH_DATABASE_URL": auth_url,
            "RENKEI_SHARE_DATABASE_URL": share_url,
            "RENKEI_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RENKEI_SHARE_JWKS_URL": f"http://127.0.0.1:{self.auth_port}/auth/jwks.json",
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
        }
        if self.cheap_hashing:  # the production cost is measured by bench/auth.py
            values |= {"RENKEI_ARGON2_TIME_COST": "1", "RENKEI_ARGON2_MEMORY_KIB": "1024",
                       "RENKEI_ARGON2_PARALLELISM": "1"}
        return {**values, **self.extra_env}

    def settings(self) -> Any:
        """The Settings the processes run with (for what a test does in-process: bootstrap a network)."""
        from services.kit.settings import Settings

        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    # Start and stop
    def start(self) -> Topology:
        """Start everything; a stopped topology starts again on the same ports (its URLs stay valid)."""
        began = self.began = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            nginx = ensure_nginx()
            self.timings["nginx_installed"] = time.monotonic() - began
            self._databases()
            self._redis()
            self._prepare()
            self._serve()
            self._nginx(nginx)
        except BaseException:
            self.stop()
            raise
        self.timings["started"] = time.monotonic() - began
        return self

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _databases(self) -> None:
        from sqlalchemy import create_engine, text

        if self.given_databases:
            return
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        try:
            with admin.connect() as connection:
                for url in (self.env["RENKEI_AUTH_DATABASE_URL"], self.env["RENKEI_SHARE_DATABASE_URL"]):
                    name = url.rsplit("/", 1)[1]
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
                    self.databases.append(name)
        except Exception as error:
            raise Unavailable(f"PostgreSQL at {PG_ADMIN_URL}: {type(error).__name__}: {error}") from error
        finally:
            admin.dispose()

    def _redis(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise Unavailable("redis-server is not installed")
        self._spawn("redis", [server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(self.work)])
        self._wait_port(self.redis_port, "redis")

    def _prepare(self) -> None:
        """Migrations and key files once, before the processes start (what `renkei serve --workers N` does in its
        preparation step), so that no two processes race to make them."""
        from services.cli import create_keys, migrate_all

        settings = self.settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate_all(settings)
        create_keys(settings)

    def renkei_command(self, service: str, port: int) -> list[str]:
        renkei = Path(sys.executable).with_name("renkei")
        command = [str(renkei) if renkei.exists() else shutil.which("renkei") or "renkei",
                   "serve", "--service", service, "--host", "127.0.0.1", "--port", str(port)]
        return [*command, "--workers", str(self.workers)] if self.workers > 1 else command

    def _serve(self) -> None:
        for name, service, port in (("auth", "auth", self.auth_port), ("share-a", "share", self.share_ports[0]),
                                    ("share-b", "share", self.share_ports[1])):
            metrics = self.work / f"metrics-{name}"
            metrics.mkdir()
            command = self.renkei_command(service, port)
            if service == "share" and self.share_command is not None:
                command = self.share_command(port)
            self._spawn(name, command,
                        env={**os.environ, **self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
            if name == "auth":  # the share processes' /readyz fetches its keys
                self._wait_ready(port, name)
        for name, port in (("share-a", self.share_ports[0]), ("share-b", self.share_ports[1])):
            self._wait_ready(port, name)

    def _nginx(self, binary: str) -> None:
        tls = self.work / "tls"
        tls.mkdir(mode=0o700)
        self.cert, key = self_signed_certificate(tls)
        (self.work / "nginx-temp").mkdir()
        config = self.work / "nginx.conf"
        config.write_text(nginx_config(work=self.work, port=self.port, doors=self.doors, auth_port=self.auth_port,
                                       share_ports=self.share_ports, cert=self.cert, key=key), encoding="utf-8")
        test = subprocess.run([binary, "-t", "-p", str(self.work), "-c", str(config)], capture_output=True,
                              text=True, check=False)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t refused the generated configuration:\n{test.stderr}")
        self._spawn("nginx", [binary, "-p", str(self.work), "-c", str(config), "-g", "daemon off;"])
        for port in (self.port, *self.doors):
            self._wait_port(port, "nginx")
        self._wait_ready(self.port, "nginx", tls=True)

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                cwd=str(ROOT), start_new_session=True)
        log.close()

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.work / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait_port(self, port: int, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(name)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} is not listening on {port}:\n{self.log_tail(name)}") from None
                time.sleep(0.05)

    def _wait_ready(self, port: int, name: str, *, tls: bool = False, timeout: float = 60) -> None:
        import httpx

        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/readyz"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                answer = httpx.get(url, timeout=5, verify=self.ssl_context() if tls else True)
                if answer.status_code == 200:
                    self.timings[f"{name}_ready"] = time.monotonic() - self.began
                    return
                last = answer.text
            except httpx.HTTPError as error:
                last = type(error).__name__
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready on {port}: {last}\n{self.log_tail(name)}")

    def pids(self) -> dict[str, list[int]]:
        """Every process of the topology by name: the server, and its children (workers, nginx's worker)."""
        found: dict[str, list[int]] = {}
        for name, process in self.processes.items():
            if process.poll() is None:
                found[name] = [process.pid, *children(process.pid)]
        return found

    def stop(self) -> None:
        order = ["nginx", "share-a", "share-b", "auth", "redis"]
        for name in [n for n in order if n in self.processes] + [n for n in self.processes if n not in order]:
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()
        if self.databases:
            from sqlalchemy import create_engine, text

            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    for name in self.databases:
                        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            finally:
                admin.dispose()
            self.databases.clear()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def children(pid: int) -> list[int]:
    """The descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def rss_kib(pid: int) -> int | None:
    """The resident set size of ``pid`` in KiB, or None if it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("action", choices=["up", "check"], help="up: serve until Ctrl-C; check: start, check, stop")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per service process")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs) at the end")
    parser.add_argument("--production-hashing", action="store_true", help="argon2id at its production cost")
    options = parser.parse_args(argv)
    try:
        topology = Topology(workers=options.workers, keep=options.keep,
                            cheap_hashing=not options.production_hashing).start()
    except Unavailable as error:
        say(f"cannot run: {error}")
        return 2
    try:
        with topology.client() as http:
            ready = http.get("/readyz")
            say(f"through nginx: /readyz {ready.status_code} {ready.json()['checks']}")
        say(f"nginx (TLS): {topology.base_url}  (instance doors {topology.door_url(0)}, {topology.door_url(1)})")
        say(f"auth 127.0.0.1:{topology.auth_port}, share 127.0.0.1:{topology.share_ports[0]} and "
            f":{topology.share_ports[1]}, redis :{topology.redis_port}, work directory {topology.work}")
        say(f"certificate: {topology.cert}; started in {topology.timings['started']:.1f} s")
        if options.action == "check":
            return 0 if ready.status_code == 200 else 1
        say("serving; Ctrl-C stops everything")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(process.poll() is None for process in topology.processes.values()):
            time.sleep(1)
        say("a process exited: stopping")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        topology.stop()


if __name__ == "__main__":
    sys.exit(main())
