"""Store benchmark: create, read and patient-scoped search on PostgreSQL, against baselines in the same run.

    .venv/bin/python bench/store.py                      # full run: 1,000,000 stored resources (≈ 20 min)
    .venv/bin/python bench/store.py --scale 20000        # about five minutes

PostgreSQL is a cluster of the run's own, configured as deployed (deploy/postgresql/renkei.conf: 4 GB of shared
buffers, not a fresh install's 128 MB); --pg URL measures on an existing server instead.
Servers, each served by uvicorn with the same number of worker processes (--workers, default 2: one per core of
this machine), each with fresh PostgreSQL databases:
  renkei  the application as deployed (validation, encryption under per-patient data keys, blind index)
  plain   the same application storing plain JSON and unhashed index terms — the encryption baseline
  bare    a bare FastAPI endpoint inserting the same JSON bytes with no validation — the floor
Load comes from one client process holding N keep-alive connections in a closed loop (one request in flight
each; bench/load.py). Figures: throughput and
p50/p90/p99 latency per operation, ratios against the baselines, and the renkei server's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import client_tls, cpu_seconds, descendants, free_port, summary
from bench.load import Workload, run
from bench.pg import own_postgres
from bench.seed import seed
from services.kit.db import make_engine
from services.kit.migrate import upgrade
from services.kit.settings import Settings

PG = os.environ.get("RENKEI_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench password 2026"


@contextmanager
def databases(*labels: str, server: str = PG) -> Iterator[dict[str, str]]:
    admin = create_engine(server.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:8]
    urls = {}
    with admin.connect() as connection:
        for label in labels:
            name = f"renkei_bench_{tag}_{label}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
            urls[label] = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield urls
    finally:
        with admin.connect() as connection:
            for url in urls.values():
                connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


@dataclass(frozen=True)
class Scene:
    """Where a two-server benchmark runs: its PostgreSQL server, the two databases, a scratch directory."""

    server_url: str
    urls: dict[str, str]
    scratch: Path

    def primary(self, mode: str, workers: int, topology: bool = False) -> Server:
        """The measured server; its baseline is ``primary(...).baseline(mode)`` (one data directory: both read the
        same key files). ``topology``: served as deployed, behind nginx (bench/fronted.py)."""
        return served(topology)(mode, self.scratch / "data", self.urls["auth"], self.urls["share"], workers)


@contextmanager
def scene(pg: str) -> Iterator[Scene]:
    """``pg`` 'own': a PostgreSQL cluster of the run's own (bench/pg.py); else an admin database URL."""
    with own_postgres() if pg == "own" else nullcontext(pg) as server_url, \
            tempfile.TemporaryDirectory() as scratch, databases("auth", "share", server=server_url) as urls:
        yield Scene(server_url, urls, Path(scratch))


class Server:
    def __init__(self, mode: str, data_dir: Path, auth_url: str | None, share_url: str, workers: int) -> None:
        self.mode, self.port, self.workers = mode, free_port(), workers
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "RENKEI_DATA_DIR": str(data_dir), "RENKEI_SHARE_DATABASE_URL": share_url,
                    "RENKEI_ACCESS_TOKEN_TTL_SECONDS": "7200", "RENKEI_PUBLIC_URL": self.base}
        if auth_url:
            self.env["RENKEI_AUTH_DATABASE_URL"] = auth_url
        self.settings = Settings(data_dir=data_dir, share_database_url=share_url, auth_database_url=auth_url,
                                 public_url=self.base)
        self.process: subprocess.Popen[bytes] | None = None
        self.cafile: str | None = None  # the certificate to trust when ``base`` is https (bench/fronted.py)
        self.peak_rss_mb = 0.0
        self._watching = False

    def baseline(self, mode: str) -> Server:
        """A server of another ``mode`` on this one's databases and key files, accepting the tokens this one's
        identity service signs, and leaving the audit chain to this one: the baseline would otherwise chain this
        server's records during its own turns, on the same database."""
        found = Server(mode, Path(self.env["RENKEI_DATA_DIR"]), self.env.get("RENKEI_AUTH_DATABASE_URL"),
                       self.env["RENKEI_SHARE_DATABASE_URL"], self.workers)
        found.env["RENKEI_PUBLIC_URL"] = self.base
        found.env["RENKEI_AUDIT_CHAIN_INTERVAL_SECONDS"] = "0"
        return found

    def start(self) -> Server:
        args = [sys.executable, str(Path(__file__).parent / "servers.py"), self.mode, str(self.port), str(self.workers)]
        env = {**self.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = "/openapi.json" if self.mode in ("bare", "pushbare") else "/readyz"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + probe, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.mode} server did not start")
            time.sleep(0.2)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for this server: its certificate when it is behind nginx."""
        return client_tls(self.base, self.cafile) or True

    def roots(self) -> list[int]:
        """The server's top processes: their descendants (workers) count with them."""
        assert self.process is not None
        return [self.process.pid]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(root) for root in self.roots())

    def rss_mb(self) -> float:
        """Resident memory of the server: its main process and every worker process, together."""
        return sum(tree_rss_mb(root) for root in self.roots())

    def rss_parts(self) -> dict[str, float]:
        """Resident memory by part of the deployment (MB): here the one server."""
        return {"server": self.rss_mb()}

    @contextmanager
    def watch_memory(self) -> Iterator[None]:
        self._watching = True

        def sample() -> None:
            while self._watching:
                self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
                time.sleep(0.25)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._watching = False
            thread.join()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def served(topology: bool) -> type[Server]:
    """The class of a measured server: one process, or behind nginx as deployed (bench/fronted.py)."""
    if topology:
        from bench.fronted import Fronted  # it builds on Server

        return Fronted
    return Server


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and every process under it (MB)."""
    total = 0.0
    for pid in [root, *descendants(root)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def prepare_renkei(server: Server, scratch: Path) -> tuple[str, str]:
    """Migrate, bootstrap a bench network, start, log in: (network id, access token)."""
    network = f"bench-{uuid.uuid4().hex[:6]}"
    bootstrap_network(server, scratch, {
        "network": {"id": network, "name": "bench", "settings": {"mfa_required": False}},
        "organizations": [{"id": f"{network}-clinic", "name": "ベンチ診療所", "type": "clinic"}],
        "users": [{"username": f"{network}-doc", "id": "bench-author", "password": PASSWORD,
                   "organization": f"{network}-clinic", "profession": "physician", "name": "ベンチ 医師"}],
    })
    server.start()
    login = httpx.post(f"{server.base}/auth/login", json={"username": f"{network}-doc", "password": PASSWORD},
                       verify=server.verify)
    return network, login.json()["access_token"]


def bootstrap_network(server: Server, scratch: Path, description: dict[str, Any]) -> None:
    """Migrate the server's databases and load a network (as `renkei admin bootstrap` does)."""
    for service, url in (("auth", server.settings.resolved_auth_database_url),
                         ("share", server.settings.resolved_share_database_url)):
        engine = make_engine(url)
        upgrade(service, engine)
        engine.dispose()
    file = scratch / f"{server.mode}-network.json"
    file.write_text(json.dumps(description, ensure_ascii=False))
    subprocess.run([sys.executable, "-m", "services.cli", "admin", "bootstrap", str(file)], env=server.env,
                   check=True, capture_output=True)


def analyze(url: str) -> None:
    """VACUUM ANALYZE after a bulk load — what autovacuum does soon after in production — then a CHECKPOINT, so
    that the measurements run neither on stale planner statistics nor beside autovacuum or a checkpoint still
    writing out the load (with large shared buffers, gigabytes of it)."""
    engine = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("VACUUM (ANALYZE)"))
        connection.execute(text("CHECKPOINT"))
    engine.dispose()


def encryption_cost(renkei: Server, plain: Server, networks: dict[str, str], rounds: int = 16,
                    per_round: int = 60) -> dict[str, Any]:
    """The create path in-process (validation, store write, commit: as the route writes a sheet) with and without
    encryption, alternating in short rounds so both see the same machine, each going first in half of them;
    medians of per-request latency. Less noisy than HTTP."""

    import orjson

    from bench.fixtures import patient, sheet
    from services.share.context import ShareContext
    from services.share.store.service import Caller
    from services.share.store.validation import parse_resource

    contexts = {"renkei": ShareContext.build(renkei.settings),
                "plain": ShareContext.build(plain.settings, plaintext_baseline=True)}
    owners = {}
    for mode, ctx in contexts.items():
        with ctx.db.transaction() as db:
            owners[mode] = ctx.store.create(db, Caller(networks[mode], "user:x"), "Patient", patient(7)).resource_id
    samples: dict[str, list[float]] = {"renkei": [], "plain": []}
    for turn in range(rounds):
        for mode, ctx in sorted(contexts.items(), reverse=turn % 2 == 1):
            caller = Caller(networks[mode], "user:x")
            raw = orjson.dumps(sheet(owners[mode], "bench-author", 1))
            for _ in range(per_round):
                start = time.perf_counter()
                body = parse_resource(raw, "QuestionnaireResponse")
                # As the route runs it (fhir/resources.py): on PostgreSQL one statement, without a transaction.
                with ctx.db.reading() if ctx.db.single_statement_writes else ctx.db.transaction() as db:
                    ctx.store.create(db, caller, "QuestionnaireResponse", body)
                samples[mode].append(time.perf_counter() - start)
    for ctx in contexts.values():
        ctx.db.dispose()
    medians = {mode: statistics.median(values) * 1000 for mode, values in samples.items()}
    share = (medians["renkei"] - medians["plain"]) / medians["renkei"]
    print(f"  create in-process (median of {rounds * per_round}): renkei {medians['renkei']:.2f} ms, "
          f"plain {medians['plain']:.2f} ms → encryption {share:+.1%} of create latency", flush=True)
    return {"renkei_ms": medians["renkei"], "plain_ms": medians["plain"], "share": share}


Run = tuple[dict[str, list[float]], int, float]  # latencies by operation, errors, seconds under load


def measure(label: str, work: Workload, clients: int, results: dict[str, Any], repeats: int = 1) -> None:
    """``repeats`` runs: latencies pooled, throughput their median (each run's kept), so that one slow spell of
    this shared machine does not decide a figure alone."""
    runs = [run(work, clients) for _ in range(repeats)]
    record(label, *_pooled(runs), results)
    if repeats > 1:
        throughputs = [sum(len(v) for v in latencies.values()) / seconds for latencies, _, seconds in runs]
        results[label]["throughput"] = statistics.median(throughputs)
        results[label]["throughput_runs"] = throughputs
        print(f"  {'':28} median of {repeats} runs {statistics.median(throughputs):.0f} req/s "
              f"(runs: {', '.join(f'{t:.0f}' for t in throughputs)})", flush=True)


def measure_alternating(works: dict[str, Workload], clients: int, results: dict[str, Any], rounds: int = 4,
                        cpu: dict[str, Callable[[], dict[str, float]]] | None = None) -> None:
    """Servers compared with each other are measured in turns (each round in a rotated order), each for its share
    of the time: a slow spell of this shared machine, or the database's own upkeep after one server's writes
    (autovacuum), then falls on all of them instead of on whichever came last.

    ``cpu``: per label, cumulative CPU seconds by part ("server", "database" …), read before and after each of
    its turns: recorded as milliseconds of CPU per request."""
    runs: dict[str, list[Run]] = {label: [] for label in works}
    used: dict[str, dict[str, float]] = {label: {} for label in works}
    labels = list(works)
    for turn in range(rounds):
        for label in labels[turn % len(labels):] + labels[:turn % len(labels)]:
            before = cpu[label]() if cpu else {}
            runs[label].append(run(dataclasses.replace(works[label], seconds=works[label].seconds / rounds), clients))
            after = cpu[label]() if cpu else {}
            for part in after:
                used[label][part] = used[label].get(part, 0.0) + after[part] - before[part]
    for label in labels:
        record(label, *_pooled(runs[label]), results)
        if used[label]:
            requests = sum(len(values) for found, _, _ in runs[label] for values in found.values())
            per_request = {part: seconds / requests * 1000 for part, seconds in used[label].items()}
            results[label]["cpu_ms_per_request"] = per_request
            print(f"  {'':28} CPU per request: " + ", ".join(f"{part} {ms:.2f} ms" for part, ms in per_request.items()),
                  flush=True)


def _pooled(runs: list[Run]) -> Run:
    latencies: dict[str, list[float]] = {}
    for found, _, _ in runs:
        for name, values in found.items():
            latencies.setdefault(name, []).extend(values)
    return latencies, sum(errors for _, errors, _ in runs), sum(seconds for _, _, seconds in runs)


def record(label: str, latencies: dict[str, list[float]], errors: int, seconds: float, results: dict[str, Any]) -> None:
    total = sum(len(v) for v in latencies.values())
    entry: dict[str, Any] = {"throughput": total / seconds, "errors": errors}
    for name, values in latencies.items():
        if values:
            entry[name] = summary(values)
    results[label] = entry
    parts = [f"{entry['throughput']:8.0f} req/s", f"errors {errors}"]
    parts += [f"{n} p50 {entry[n]['p50_ms']:.1f} p99 {entry[n]['p99_ms']:.1f} ms" for n in latencies if n in entry]
    print(f"  {label:28} " + " | ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1_000_000, help="stored resources for the scale phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections (closed loop)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (each server alike)")
    parser.add_argument("--pg", default="own",
                        help="'own' (default): a cluster of this run's own configured by deploy/postgresql/renkei.conf;"
                             f" or the URL of an existing server's admin database (such as {PG})")
    parser.add_argument("--topology", action="store_true",
                        help="serve renkei and plain as deployed: nginx (TLS), an identity-service process and two "
                             "share-service processes each (bench/fronted.py); the bare endpoint stays one direct "
                             "process; --workers is then ignored")
    args = parser.parse_args()
    results: dict[str, Any] = {"config": vars(args)}

    with own_postgres() if args.pg == "own" else nullcontext(args.pg) as server, \
            tempfile.TemporaryDirectory() as scratch_dir, \
            databases("auth", "share", "plainauth", "plainshare", "bare", server=server) as urls:
        scratch = Path(scratch_dir)
        renkei = served(args.topology)("renkei", scratch / "renkei", urls["auth"], urls["share"], args.workers)
        plain = served(args.topology)("plain", scratch / "plain", urls["plainauth"], urls["plainshare"], args.workers)
        bare = Server("bare", scratch / "bare", None, urls["bare"], args.workers)
        try:
            print("1. create / read / search against the baselines (small store)", flush=True)
            ids: dict[str, tuple[list[str], list[str], list[str]]] = {}
            tokens = {}
            for server, is_plain in ((renkei, False), (plain, True)):
                network, tokens[server.mode] = prepare_renkei(server, scratch)
                ids[server.mode] = seed(server.settings, network, 1000, 200, 20, 2, plaintext=is_plain,
                                       organization=f"{network}-clinic")
                analyze(server.settings.resolved_share_database_url)
            bare.start()

            def work(server: Server, mix: dict[str, float], token: str = "") -> Workload:
                patients, heavy, sample = ids.get(server.mode, ids["renkei"])
                return Workload(server.base, token or tokens.get(server.mode, ""), mix, args.seconds,
                                patients=patients, search_patients=heavy, reads=sample, cafile=server.cafile)

            networks = {mode: json.loads((scratch / f"{mode}-network.json").read_text())["network"]["id"]
                        for mode in ("renkei", "plain")}
            results["encryption_in_process"] = encryption_cost(renkei, plain, networks)
            with renkei.watch_memory():
                measure_alternating({"create  bare endpoint": work(bare, {"create": 1}, "none"),
                                     "create  plain-JSON store": work(plain, {"create": 1}),
                                     "create  renkei (encrypted)": work(renkei, {"create": 1})}, args.clients, results)
            measure("read    plain-JSON store", work(plain, {"read": 1}), args.clients, results)
            measure("read    renkei (encrypted)", work(renkei, {"read": 1}), args.clients, results)
            measure("search  plain-JSON store", work(plain, {"search": 1}), args.clients, results)
            measure("search  renkei (encrypted)", work(renkei, {"search": 1}), args.clients, results)
            plain.stop()
            bare.stop()

            print(f"2. scale: {args.scale:,} stored resources in the renkei store", flush=True)
            patients = max(1000, args.scale // 10)
            heavy = patients * 32 // 100
            light = max(0, -(-(args.scale - patients - heavy * 20) // max(1, patients - heavy)))  # round up
            started = time.perf_counter()
            small = ids["renkei"]
            renkei_network = json.loads((scratch / "renkei-network.json").read_text())["network"]["id"]
            big = seed(renkei.settings, renkei_network, patients, heavy, 20, light,
                       organization=f"{renkei_network}-clinic",
                       progress=lambda n: print(f"\r  seeded {n:,}", end="", flush=True))
            print(f"\r  seeded {patients + heavy * 20 + (patients - heavy) * light:,} resources "
                  f"in {time.perf_counter() - started:.0f} s", flush=True)
            ids["renkei"] = (big[0] + small[0], big[1], big[2])
            analyze(urls["share"])
            with renkei.watch_memory():
                measure("read    at scale", work(renkei, {"read": 1}), args.clients, results)
                measure("search  at scale (20 results)", work(renkei, {"search": 1}), args.clients, results)
                measure("mixed   20% create 50% read 30% search",
                        work(renkei, {"create": 0.2, "read": 0.5, "search": 0.3}), args.clients, results, repeats=3)
            results["renkei_peak_rss_mb"] = renkei.peak_rss_mb
        finally:
            for server in (renkei, plain, bare):
                server.stop()

    report(results)


def report(results: dict[str, Any]) -> None:
    create = {k: results[f"create  {k}"] for k in ("bare endpoint", "plain-JSON store", "renkei (encrypted)")}
    full, floor, plain = create["renkei (encrypted)"], create["bare endpoint"], create["plain-JSON store"]
    encryption = (full["create"]["p50_ms"] - plain["create"]["p50_ms"]) / full["create"]["p50_ms"]
    in_process = results["encryption_in_process"]["share"]
    read, search = results["read    at scale"]["read"], results["search  at scale (20 results)"]["search"]
    mixed = results["mixed   20% create 50% read 30% search"]["throughput"]
    lines = [
        ("create throughput vs bare endpoint", f"{full['throughput'] / floor['throughput']:.0%}", "≥ 50%"),
        ("encryption share of create latency (in-process)", f"{in_process:+.1%}", "≤ 5%"),
        ("encryption share of create latency (HTTP p50)", f"{encryption:+.1%}", "≤ 5% (noisier)"),
        ("read p99 at scale", f"{read['p99_ms']:.1f} ms", "≤ 20 ms"),
        ("patient search (20) p99 at scale", f"{search['p99_ms']:.1f} ms", "≤ 40 ms"),
        ("mixed throughput at scale", f"{mixed:.0f} req/s", "≥ 1000 req/s"),
        ("renkei server peak RSS", f"{results['renkei_peak_rss_mb']:.0f} MB", "< 400 MB"),
    ]
    print("\nsummary")
    for name, value, target in lines:
        print(f"  {name:42} {value:>12}   target {target}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "store.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
