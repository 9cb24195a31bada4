"""Soak: a long run of mixed load against the production topology (scripts/topology.py: nginx with TLS, one
`renkei serve --service auth`, two `renkei serve --service share`, PostgreSQL, Redis), watching for errors and for
memory that grows.

    .venv/bin/python -m bench.soak                  # 10 minutes (CI runs 60 s: tests/reliability/test_soak.py)
    .venv/bin/python -m bench.soak --seconds 3600 --workers 2 --json bench/results/soak.json

The load, all through nginx: HTTP clients (threads) each looping over a mix of logins (password, a fresh session),
sheet writes (daily care notes; now and then a discharge sheet, which raises acknowledgement Tasks), messages
(Communications), searches (sheets, messages and Tasks of a patient; patients by name) and reads; and WebSocket
clients on both share instances (through nginx's pinned ports), each answering heartbeats, acknowledging what it
is pushed, and reconnecting from its cursor with a fresh token every minute or so.

Every process's resident set size (RSS, from /proc) is sampled every 10 s. After the warm-up (default: the first
fifth of the run, at least 20 s) the RSS must grow by less than 10% (last sample against the first after the
warm-up) for each process (the three Renkei processes and their workers, nginx's, redis-server), and no request
may fail: any answer other than the expected status, any exception, any WebSocket dropped by the server counts as
an error. Prints the figures; exit code 1 on failure,
2 if the topology cannot run here (no nginx, PostgreSQL or redis-server).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from bench import fixtures
from bench.common import load_topology

PASSWORD = "soak: correct horse battery staple"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ROLE = "urn:renkei:codesystem:care-team-role"
CATEGORY = "urn:renkei:codesystem:message-category"
TASK = "urn:renkei:codesystem:task-code"
SUBPROTOCOL = "renkei.v1"
# What a Renkei process may grow by after the warm-up.
RSS_LIMIT = 0.10
# The operations and how often each is picked (out of their sum).
MIX = {"login": 1, "sheet": 3, "discharge": 1, "message": 3, "search": 5, "read": 3}


@dataclass
class Tally:
    """Operations done and failed, shared by every client thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.done[kind] += 1
            self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, why: str) -> None:
        with self.lock:
            self.done[kind] += 1
            self.failed[kind] += 1
            if len(self.failures) < 20:
                self.failures.append(f"{kind}: {why}")


@dataclass
class Scene:
    """The network the load runs in: a clinic's physician, nurses and care managers, patients on their teams."""

    network: str
    users: dict[str, dict[str, str]]  # username -> {"id", "profession"}
    patients: list[str] = field(default_factory=list)
    plant: str = ""  # a string the patients' names and the messages carry (tests/planted.py searches the logs)


def bootstrap(topology: Any, patients: int, nurses: int, managers: int, plant: str = "") -> Scene:
    """The network through the identity service's bootstrap (as `renkei admin bootstrap` does), its patients
    through the API, through nginx."""
    from services.auth.context import AuthContext
    from services.auth.directory.schemas import BootstrapFile
    from services.auth.directory.service import Directory

    tag = uuid.uuid4().hex[:6]
    network = f"soak-{tag}"
    orgs = {"clinic": f"{network}-clinic", "station": f"{network}-station", "office": f"{network}-office"}
    users: dict[str, dict[str, str]] = {f"{network}-doc": {"id": f"{network}-doc", "profession": "physician",
                                                           "organization": orgs["clinic"]}}
    users |= {f"{network}-nurse-{i}": {"id": f"{network}-nurse-{i}", "profession": "nurse",
                                       "organization": orgs["station"]} for i in range(nurses)}
    users |= {f"{network}-cm-{i}": {"id": f"{network}-cm-{i}", "profession": "care-manager",
                                    "organization": orgs["office"]} for i in range(managers)}
    data = {
        "network": {"id": network, "name": f"ソーク {tag}",
                    "settings": {"mfa_required": False, "team_join_approvals": []}},
        "organizations": [{"id": orgs["clinic"], "name": "ソーク在宅クリニック", "type": "clinic"},
                          {"id": orgs["station"], "name": "ソーク訪問看護", "type": "visiting-nurse-station"},
                          {"id": orgs["office"], "name": "ソーク居宅介護支援", "type": "home-care-support-office"}],
        "users": [{"id": u["id"], "username": name, "password": PASSWORD, "organization": u["organization"],
                   "profession": u["profession"], "name": f"ソーク {name}", "admin": False}
                  for name, u in users.items()],
    }
    ctx = AuthContext.build(topology.settings())
    try:
        with ctx.db.transaction() as db:
            Directory(ctx).bootstrap(db, BootstrapFile.model_validate(data))
    finally:
        ctx.db.dispose()
    scene = Scene(network=network, users=users, plant=plant)
    with topology.client() as http:
        doctor = {"Authorization": f"Bearer {login(http, f'{network}-doc')}"}
        for index in range(patients):
            patient = fixtures.patient(index)
            patient["name"][0]["family"] += plant  # still found by a search for the family name (a prefix)
            pid = posted(http, doctor, patient)
            posted(http, doctor, {"resourceType": "Consent", "status": "active",
                                  "scope": {"text": "patient-privacy"}, "category": [{"text": "共同利用への同意"}],
                                  "patient": {"reference": f"Patient/{pid}"},
                                  "dateTime": "2026-01-01T10:00:00+09:00", "provision": {"type": "permit"}})
            found = http.get("/fhir/CareTeam", params={"patient": pid}, headers=doctor).json()
            team = found["entry"][0]["resource"]
            for name, user in users.items():
                if user["profession"] != "physician":
                    role = "care-manager" if user["profession"] == "care-manager" else "visiting-nurse"
                    team["participant"].append({"role": [{"coding": [{"system": ROLE, "code": role}]}],
                                                "member": {"reference": f"Practitioner/{users[name]['id']}"},
                                                "period": {"start": "2026-01-01"}})
            answer = http.put(f"/fhir/CareTeam/{team['id']}", json=team, headers={**doctor, **FHIR_JSON})
            assert answer.status_code == 200, answer.text
            scene.patients.append(pid)
    return scene


def login(http: httpx.Client, username: str) -> str:
    answer = http.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def posted(http: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> str:
    answer = http.post(f"/fhir/{body['resourceType']}", json=body, headers={**headers, **FHIR_JSON})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


# The HTTP clients ---------------------------------------------------------------------------------------------


class HttpClient(threading.Thread):
    """One user's client (a nurse's tablet): loops over the mix until told to stop."""

    def __init__(self, topology: Any, scene: Scene, username: str, tally: Tally, stop: threading.Event,
                 seed: int, pause: float) -> None:
        super().__init__(daemon=True, name=f"http-{username}")
        self.topology, self.scene, self.username, self.tally, self.stop = topology, scene, username, tally, stop
        self.rng = random.Random(seed)
        self.pause = pause
        self.token, self.token_at = "", 0.0
        self.user = scene.users[username]
        self.day = seed * 1000

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def run(self) -> None:
        kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]
        with self.topology.client() as http:
            while not self.stop.is_set():
                kind = "login" if time.monotonic() - self.token_at > 240 else self.rng.choice(kinds)
                began = time.monotonic()
                try:
                    why = getattr(self, f"do_{kind}")(http)
                except Exception as error:
                    why = f"{type(error).__name__}: {error}"
                if why:
                    self.tally.fail(kind, why)
                else:
                    self.tally.ok(kind, time.monotonic() - began)
                self.stop.wait(self.pause)

    @staticmethod
    def expect(answer: httpx.Response, status: int) -> str | None:
        if answer.status_code == status:
            return None
        return f"{answer.request.method} {answer.request.url.path} → {answer.status_code} {answer.text[:200]}"

    def do_login(self, http: httpx.Client) -> str | None:
        answer = http.post("/auth/login", json={"username": self.username, "password": PASSWORD})
        if answer.status_code == 200:
            self.token, self.token_at = answer.json()["access_token"], time.monotonic()
        return self.expect(answer, 200)

    def patient(self) -> str:
        return self.rng.choice(self.scene.patients)

    def do_sheet(self, http: httpx.Client) -> str | None:
        self.day += 1
        body = fixtures.daily_note(self.patient(), self.user["id"], self.day)
        return self.expect(http.post("/fhir/QuestionnaireResponse", json=body, headers={**self.headers(),
                                                                                         **FHIR_JSON}), 201)

    def do_discharge(self, http: httpx.Client) -> str | None:
        self.day += 1
        body = fixtures.sheet(self.patient(), self.user["id"], self.day)
        return self.expect(http.post("/fhir/QuestionnaireResponse", json=body, headers={**self.headers(),
                                                                                         **FHIR_JSON}), 201)

    def do_message(self, http: httpx.Client) -> str | None:
        body = {"resourceType": "Communication", "status": "completed",
                "category": [{"coding": [{"system": CATEGORY, "code": "daily-update"}]}],
                "subject": {"reference": f"Patient/{self.patient()}"}, "sent": "2026-12-04T09:00:00+09:00",
                "payload": [{"contentString": f"本日の訪問で変わりありません "
                                              f"({uuid.uuid4().hex[:6]}{self.scene.plant})"}]}
        return self.expect(http.post("/fhir/Communication", json=body, headers={**self.headers(), **FHIR_JSON}),
                           201)

    def do_search(self, http: httpx.Client) -> str | None:
        pid = self.patient()
        path, params = self.rng.choice([
            ("/fhir/QuestionnaireResponse", {"patient": pid, "_count": "10", "_sort": "-authored"}),
            ("/fhir/Communication", {"patient": pid, "_count": "20"}),
            ("/fhir/Task", {"patient": pid, "code": f"{TASK}|acknowledge", "status": "requested"}),
            ("/fhir/Patient", {"name": self.rng.choice(fixtures.FAMILY)}),
        ])
        return self.expect(http.get(path, params=params, headers=self.headers()), 200)

    def do_read(self, http: httpx.Client) -> str | None:
        return self.expect(http.get(f"/fhir/Patient/{self.patient()}", headers=self.headers()), 200)


# The WebSocket clients ----------------------------------------------------------------------------------------


class SocketClient(threading.Thread):
    """A care manager's app on one share instance (through nginx's port pinned to it): subscribes, answers pings,
    acknowledges what it is pushed, reconnects from its cursor with a fresh token every ``session`` seconds."""

    def __init__(self, topology: Any, username: str, instance: int, tally: Tally, stop: threading.Event,
                 session: float) -> None:
        super().__init__(daemon=True, name=f"ws-{username}-{instance}")
        self.topology, self.username, self.instance, self.tally, self.stop = topology, username, instance, tally, stop
        self.session = session
        self.cursor: int | None = None
        self.events = 0

    def run(self) -> None:
        from websockets.sync.client import connect

        while not self.stop.is_set():
            began = time.monotonic()
            try:
                with self.topology.client() as http:
                    token = login(http, self.username)
                with connect(self.topology.ws_url(self.instance), ssl=self.topology.ssl_context(),
                             subprotocols=[SUBPROTOCOL], open_timeout=15) as socket:  # type: ignore[list-item]
                    socket.send(json.dumps({"type": "auth", "token": token}))
                    if json.loads(socket.recv(timeout=15))["type"] != "authenticated":
                        raise RuntimeError("not authenticated")
                    socket.send(json.dumps({"type": "subscribe", "since": self.cursor}))
                    self.tally.ok("ws-connect", time.monotonic() - began)
                    self.listen(socket, began)
            except Exception as error:
                self.tally.fail("ws-connect" if not self.events else "ws", f"{type(error).__name__}: {error}")
                self.stop.wait(1)

    def listen(self, socket: Any, began: float) -> None:
        while not self.stop.is_set() and time.monotonic() - began < self.session:
            try:
                frame = json.loads(socket.recv(timeout=1))
            except TimeoutError:
                continue
            if frame["type"] == "event":
                self.events += 1
                self.cursor = int(frame["seq"])
                socket.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
                with self.tally.lock:
                    self.tally.done["ws-event"] += 1
            elif frame["type"] == "ping":
                socket.send(json.dumps({"type": "pong"}))
            elif frame["type"] == "error":
                raise RuntimeError(f"the server closed the socket: {frame}")


# Memory -------------------------------------------------------------------------------------------------------


def sample_rss(topology: Any, module: ModuleType) -> dict[str, int]:
    """KiB per process: "share-a", and "share-a/1234" for a process under it (a worker, nginx's worker)."""
    sizes: dict[str, int] = {}
    for name, pids in topology.pids().items():
        for index, pid in enumerate(pids):
            size = module.rss_kib(pid)
            if size is not None:
                sizes[name if index == 0 else f"{name}/{pid}"] = size
    return sizes


@dataclass
class Result:
    seconds: float
    operations: int
    errors: int
    by_kind: dict[str, tuple[int, int]]
    failures: list[str]
    samples: list[tuple[float, dict[str, int]]]
    warmup: float
    growth: dict[str, float]
    ws_events: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.operations if self.operations else 0.0

    def memory_ok(self, limit: float = RSS_LIMIT) -> bool:
        return all(value < limit for value in self.growth.values())

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.operations > 0 and self.memory_ok() and bool(self.growth)

    def report(self) -> str:
        lines = [f"soak: {self.seconds:.0f} s, {self.operations} operations ({self.operations / self.seconds:.1f}/s),"
                 f" {self.errors} errors — error rate {self.error_rate:.4%}; {self.ws_events} WebSocket events "
                 f"delivered"]
        for kind, (done, failed) in sorted(self.by_kind.items()):
            lines.append(f"  {kind:<12} {done:7d} done {failed:5d} failed")
        lines.extend(f"  failure: {failure}" for failure in self.failures)
        names = sorted({name for _, sizes in self.samples for name in sizes})
        lines.append(f"RSS (MiB) every sample; warm-up until {self.warmup:.0f} s; growth = last / first after warm-up")
        lines.append("  " + f"{'t (s)':>6} " + " ".join(f"{name[:15]:>15}" for name in names))
        for at, sizes in self.samples:
            cells = " ".join(f"{sizes[name] / 1024:15.1f}" if name in sizes else f"{'-':>15}" for name in names)
            lines.append(f"  {at:6.0f} {cells}")
        lines.extend(f"  growth {name:<24} {self.growth[name]:+7.2%} (limit {RSS_LIMIT:.0%})"
                     for name in names if name in self.growth)
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "operations": self.operations, "errors": self.errors,
                "error_rate": self.error_rate, "by_kind": self.by_kind, "failures": self.failures,
                "samples": self.samples, "warmup_seconds": self.warmup, "rss_growth": self.growth,
                "ws_events": self.ws_events, "ok": self.ok}


def growth_after(samples: list[tuple[float, dict[str, int]]], warmup: float) -> dict[str, float]:
    after = [sizes for at, sizes in samples if at >= warmup]
    if len(after) < 2:
        return {}
    first, last = after[0], after[-1]
    return {name: last[name] / first[name] - 1 for name in first if name in last and first[name]}


def soak(topology: Any, module: ModuleType, *, seconds: float, warmup: float, http_clients: int,
         ws_clients: int, pause: float, sample_every: float = 10.0, session: float = 60.0,
         patients: int = 8, plant: str = "") -> Result:
    """Run the load against a started topology for ``seconds``; the figures."""
    scene = bootstrap(topology, patients, nurses=http_clients, managers=max(1, ws_clients), plant=plant)
    tally, stop = Tally(), threading.Event()
    nurses = [name for name, user in scene.users.items() if user["profession"] == "nurse"]
    managers = [name for name, user in scene.users.items() if user["profession"] == "care-manager"]
    threads: list[threading.Thread] = [HttpClient(topology, scene, nurses[i % len(nurses)], tally, stop, i + 1, pause)
                                       for i in range(http_clients)]
    sockets = [SocketClient(topology, managers[i % len(managers)], i % 2, tally, stop,
                            session * (0.8 + 0.4 * random.random())) for i in range(ws_clients)]
    threads += sockets
    began = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, dict[str, int]]] = []
    try:
        tick = 0
        while True:
            elapsed = time.monotonic() - began
            samples.append((elapsed, sample_rss(topology, module)))
            print(f"[soak] {elapsed:5.0f} s: {sum(tally.done.values())} operations, {sum(tally.failed.values())} "
                  f"errors; RSS MiB " + ", ".join(f"{n} {v / 1024:.0f}" for n, v in samples[-1][1].items()
                                                  if "/" not in n), file=sys.stderr, flush=True)
            if elapsed >= seconds - 0.1:
                break
            tick += 1
            time.sleep(max(0.0, began + min(tick * sample_every, seconds) - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    duration = time.monotonic() - began
    kinds = set(tally.done) - {"ws-event"}
    return Result(seconds=duration, operations=sum(tally.done[k] for k in kinds),
                  errors=sum(tally.failed.values()),
                  by_kind={k: (tally.done[k], tally.failed[k]) for k in sorted(set(tally.done))},
                  failures=tally.failures, samples=samples, warmup=warmup, growth=growth_after(samples, warmup),
                  ws_events=tally.done["ws-event"])


def run(*, seconds: float = 600.0, warmup: float | None = None, http_clients: int = 4, ws_clients: int = 6,
        pause: float = 0.02, workers: int = 1, sample_every: float = 10.0, session: float = 60.0, plant: str = "",
        logs_to: Callable[[Path], object] | None = None) -> Result:
    """Start the topology, soak it, tear it down. Raises the topology's ``Unavailable`` if it cannot run here.
    ``plant``: a string for the patients' names and the messages; ``logs_to``: handed the topology's working
    directory (its processes' logs) once they stopped, before it is removed (tests/planted.py scans them)."""
    module = load_topology()
    warm = warmup if warmup is not None else max(20.0, seconds / 5)
    topology = module.Topology(workers=workers, keep=logs_to is not None)
    try:
        with topology:
            print(f"[soak] topology up in {topology.timings['started']:.1f} s: {topology.base_url}",
                  file=sys.stderr)
            return soak(topology, module, seconds=seconds, warmup=warm, http_clients=http_clients,
                        ws_clients=ws_clients, pause=pause, sample_every=sample_every, session=session, plant=plant)
    finally:
        if logs_to is not None:
            logs_to(topology.work)
            shutil.rmtree(topology.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the production topology with mixed load.")
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs (default 600)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before RSS growth is measured (default: a fifth of the run, at least 20)")
    parser.add_argument("--http-clients", type=int, default=4, help="HTTP client threads (default 4)")
    parser.add_argument("--ws-clients", type=int, default=6, help="WebSocket clients, half per instance (default 6)")
    parser.add_argument("--pause", type=float, default=0.02, help="each HTTP client's pause between requests (s)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per Renkei process (default 1)")
    parser.add_argument("--session", type=float, default=60.0, help="a WebSocket's life before it reconnects (s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    options = parser.parse_args(argv)
    module = load_topology()
    try:
        result = run(seconds=options.seconds, warmup=options.warmup, http_clients=options.http_clients,
                     ws_clients=options.ws_clients, pause=options.pause, workers=options.workers,
                     session=options.session)
    except module.Unavailable as error:
        print(f"soak: the topology cannot run here: {error}", file=sys.stderr)
        return 2
    print(result.report())
    if options.json:
        options.json.write_text(json.dumps(result.as_json(), indent=2), encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
