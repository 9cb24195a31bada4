"""The reliability suite's common parts: a share deployment of a test's own (PostgreSQL cluster, `renkei serve`
processes, optionally Redis), client threads writing under load, and the check that the store is whole.

``RENKEI_RELIABILITY_CYCLES`` sets how many kills / outages a test goes through (default 5, for CI; the full run is
100). Every test prints what it checked (``pytest -s``).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fhir_helpers import FHIR_JSON, created_id, patient
from tests.infra import free_port
from tests.reliability.processes import Directory, Postgres, Redis, Server, require_binaries, server_env
from tests.test_access_rules import consent

CYCLES = int(os.environ.get("RENKEI_RELIABILITY_CYCLES", "5"))
MARKER_SYSTEM = "urn:renkei:test:reliability"


@dataclass
class Stack:
    """One deployment: its cluster, its servers (sharing databases and key files), a network with a writer (a
    physician without a second factor, so that a token is one request away) and patients on the writer's team."""

    pg: Postgres
    servers: list[Server]
    network: Any
    patients: list[str]
    redis: Redis | None = None
    token: str = ""
    token_at: float = 0.0
    writers: list[Writers] = field(default_factory=list)  # every load run on it, for the checks of later tests
    verified: Verified = field(default_factory=lambda: Verified())  # what the checks have read back so far

    @property
    def server(self) -> Server:
        return self.servers[0]

    def headers(self) -> dict[str, str]:
        """The writer's bearer header, renewed when older than five minutes (access tokens live ten)."""
        if time.monotonic() - self.token_at > 300:
            self.token = self.network.login("writer")["access_token"]
            self.token_at = time.monotonic()
        return {"Authorization": f"Bearer {self.token}"}

    def share_sql(self, query: str, **params: Any) -> list[Any]:
        return self.pg.sql("renkei_share", query, **params)


def build_stack(root: Path, *, instances: int = 1, redis: bool = False, patients: int = 2,
                **settings: Any) -> Stack:
    """Start a cluster (and Redis), ``instances`` `renkei serve` processes on it, and a network with patients."""
    require_binaries()
    pg = Postgres()
    own_redis: Redis | None = None
    servers: list[Server] = []
    try:
        pg.start()
        auth_url, share_url = pg.create_database("renkei_auth"), pg.create_database("renkei_share")
        if redis:
            own_redis = Redis()
            own_redis.start()
        ports = [free_port() for _ in range(instances)]
        public = f"http://127.0.0.1:{ports[0]}"  # the issuer every instance verifies tokens against
        env = server_env(str(root), public, auth_url, share_url, own_redis.url if own_redis else None, **settings)
        for index, port in enumerate(ports):
            server = Server(env, port, root / f"server-{index}.log")
            servers.append(server)
            server.start()  # one at a time: the first migrates and makes the key files
        network = Directory(env, servers[0].base).make_network(
            settings={"team_join_approvals": []},
            extra_users=[{"role": "writer", "organization": "clinic", "profession": "physician"}])
        stack = Stack(pg, servers, network, [], own_redis)
        with httpx.Client(base_url=servers[0].base, timeout=30) as http:
            headers = {**stack.headers(), **FHIR_JSON}
            for _ in range(patients):
                pid = created_id(http.post("/fhir/Patient", json=patient(), headers=headers))
                created_id(http.post("/fhir/Consent", json=consent(pid), headers=headers))
                stack.patients.append(pid)
        return stack
    except BaseException:
        for server in servers:
            server.kill()
        if own_redis is not None:
            own_redis.remove()
        pg.remove()
        raise


def tear_down(stack: Stack) -> None:
    for server in stack.servers:
        server.stop()
    if stack.redis is not None:
        stack.redis.remove()
    stack.pg.remove()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `renkei serve` on a cluster of the module's own."""
    built = build_stack(tmp_path_factory.mktemp("reliability"), event_poll_seconds=0.5)
    yield built
    tear_down(built)


# --- writes under load --------------------------------------------------------------------------------------------


def observation(pid: str, marker: str, rng: random.Random) -> dict[str, Any]:
    """A body temperature whose identifier is ``marker``: how a write is found again, acknowledged or not."""
    return {"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
            "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2026-12-04T09:00:00+09:00",
            "valueQuantity": {"value": round(rng.uniform(35.5, 39.5), 1), "unit": "Cel"},
            "note": [{"text": f"信頼性試験 {marker}"}]}


@dataclass
class Attempt:
    marker: str
    patient: str
    body: dict[str, Any]
    status: int | None = None  # None: no answer (connection refused or cut)
    id: str | None = None
    retry_after: str | None = None
    answered_at: float = 0.0  # time.monotonic() when the answer (or the failure) came
    error: str | None = None  # without an answer: ConnectError (nothing sent), else cut mid-request


@dataclass
class Writers:
    """``threads`` clients posting creates in a loop, to the bases in turn; each attempt is recorded."""

    stack: Stack
    bases: list[str]
    make: Callable[[str, str, random.Random], dict[str, Any]] = observation
    threads: int = 4
    attempts: list[Attempt] = field(default_factory=list)
    pause_between: float = 0.0
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _go: bool = False
    _in_flight: int = 0
    _stop: bool = False
    _workers: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stack.writers.append(self)

    def start(self) -> Writers:
        self._go = True
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        clients = [httpx.Client(base_url=base, timeout=15) for base in self.bases]
        turn = index
        try:
            while True:
                with self._lock:
                    self._lock.wait_for(lambda: self._go or self._stop)
                    if self._stop:
                        return
                    self._in_flight += 1
                    headers = {**self.stack.headers(), **FHIR_JSON}
                try:
                    pid = self.stack.patients[turn % len(self.stack.patients)]
                    marker = uuid.uuid4().hex
                    attempt = Attempt(marker, pid, self.make(pid, marker, rng))
                    turn += 1
                    try:
                        client = clients[turn % len(clients)]
                        answer = client.post(f"/fhir/{attempt.body['resourceType']}", json=attempt.body,
                                             headers=headers)
                        attempt.status = answer.status_code
                        attempt.retry_after = answer.headers.get("retry-after")
                        if 200 <= answer.status_code < 300:
                            attempt.id = str(answer.json()["id"])
                    except httpx.HTTPError as error:
                        attempt.error = type(error).__name__
                    attempt.answered_at = time.monotonic()
                    with self._lock:
                        self.attempts.append(attempt)
                    if attempt.status is None or attempt.status >= 500:
                        time.sleep(0.05)  # the server is away: do not spin
                    elif self.pause_between:
                        time.sleep(self.pause_between)
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        self._lock.notify_all()
        finally:
            for client in clients:
                client.close()

    def pause(self) -> None:
        """Stop sending; returns once no request is in flight."""
        with self._lock:
            self._go = False
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=60)

    def resume(self) -> None:
        with self._lock:
            self._go = True
            self._lock.notify_all()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)

    def acknowledged(self) -> dict[str, Attempt]:
        with self._lock:
            return {a.id: a for a in self.attempts if a.id is not None}

    def acknowledged_after(self, count: int) -> bool:
        """Whether a write after the first ``count`` attempts has been acknowledged."""
        with self._lock:
            return any(a.id is not None for a in self.attempts[count:])

    def cut(self) -> int:
        """Writes sent whose answer never came (the connection broke mid-request)."""
        with self._lock:
            return sum(1 for a in self.attempts if a.error is not None and a.error != "ConnectError")

    def by_marker(self) -> dict[str, Attempt]:
        with self._lock:
            return {a.marker: a for a in self.attempts}

    def statuses(self) -> dict[int | None, int]:
        with self._lock:
            counts: dict[int | None, int] = {}
            for attempt in self.attempts:
                counts[attempt.status] = counts.get(attempt.status, 0) + 1
            return counts


# --- the store is whole -------------------------------------------------------------------------------------------


def same_content(sent: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Every element sent is stored as sent (the server adds id, meta and, for a Communication, little else)."""
    return all(stored.get(key) == value for key, value in sent.items())


def marker_of(resource: dict[str, Any]) -> str | None:
    for identifier in resource.get("identifier", []):
        if identifier.get("system") == MARKER_SYSTEM:
            return str(identifier["value"])
    return None


@dataclass
class Verified:
    """What the checks have covered so far (across cycles)."""

    read_back: set[str] = field(default_factory=set)  # acknowledged ids read back in full
    unacknowledged_present: set[str] = field(default_factory=set)  # unanswered writes found whole
    checks: int = 0


def wait_numbered(stack: Stack, timeout: float = 20) -> float:
    """Wait until the hub has numbered every event; the seconds that took."""
    started = time.monotonic()
    while stack.share_sql("SELECT count(*) FROM event_log WHERE seq IS NULL")[0][0]:
        assert time.monotonic() - started < timeout, "events left unnumbered: the hub did not recover"
        time.sleep(0.1)
    return time.monotonic() - started


def acknowledged(stack: Stack, resource_type: str) -> dict[str, Attempt]:
    """Every write of the type acknowledged on the stack so far, by id."""
    return {rid: attempt for writers in stack.writers for rid, attempt in writers.acknowledged().items()
            if attempt.body["resourceType"] == resource_type}


def verify_store(stack: Stack, verified: Verified, resource_type: str = "Observation") -> None:
    """With the writers paused: every acknowledged write is there, whole and as sent; a write without an answer
    is there whole or not at all; a refused one is not there; the event log matches the versions exactly. Writes
    of earlier tests on the stack count too; ``verified`` keeps what was read back, to read only the new."""
    network = stack.network.id
    acked = acknowledged(stack, resource_type)
    markers = {marker: a for earlier in stack.writers for marker, a in earlier.by_marker().items()}
    heads = {row[0]: (row[1], row[2], row[3]) for row in stack.share_sql(
        "SELECT resource_id, patient_id, version, deleted FROM resources WHERE resource_type = :t AND network_id = :n",
        t=resource_type, n=network)}
    versions = {(row[0], row[1]) for row in stack.share_sql(
        "SELECT resource_id, version FROM resource_versions WHERE resource_type = :t AND network_id = :n",
        t=resource_type, n=network)}
    indexed = {row[0] for row in stack.share_sql(
        "SELECT DISTINCT resource_id FROM search_index WHERE resource_type = :t AND network_id = :n",
        t=resource_type, n=network)}
    # Every version of every resource (of every type) has exactly one event naming it, and every event a version.
    mismatched = stack.share_sql(
        "SELECT v.resource_type, v.resource_id, v.version, count(e.id) FROM resource_versions v "
        "LEFT JOIN event_log e ON e.resource_type = v.resource_type AND e.resource_id = v.resource_id "
        "AND e.version = v.version GROUP BY 1, 2, 3 HAVING count(e.id) <> 1")
    assert not mismatched, f"versions without exactly one event: {mismatched[:5]}"
    orphans = stack.share_sql(
        "SELECT e.resource_type, e.resource_id, e.version FROM event_log e WHERE NOT EXISTS (SELECT 1 FROM "
        "resource_versions v WHERE v.resource_type = e.resource_type AND v.resource_id = e.resource_id "
        "AND v.version = e.version)")
    assert not orphans, f"events without their version: {orphans[:5]}"
    kinds = stack.share_sql("SELECT count(*) FROM event_log WHERE resource_type = :t AND network_id = :n "
                            "AND (version <> 1 OR kind <> 'created')", t=resource_type, n=network)[0][0]
    assert kinds == 0, "a create's event is not version 1, created"

    lost = set(acked) - set(heads)
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:3]}"
    for rid, (_pid, version, deleted) in heads.items():
        assert version == 1 and not deleted, (rid, version, deleted)
        assert (rid, 1) in versions, f"{rid}: head without its version"
        assert rid in indexed, f"{rid}: not in the search index"
    assert {rid for rid, _ in versions} == set(heads), "versions without a head"
    assert indexed <= set(heads), "search index entries of no resource"

    with httpx.Client(base_url=stack.server.base, timeout=30) as http:
        headers = stack.headers()
        # Read back what was acknowledged since the last check, and whatever is there without an answer.
        for rid in set(heads) - verified.read_back - verified.unacknowledged_present:
            answer = http.get(f"/fhir/{resource_type}/{rid}", headers=headers)
            assert answer.status_code == 200, (rid, answer.status_code, answer.text)
            stored = answer.json()
            marker = marker_of(stored)
            attempt = markers.get(marker or "")
            assert attempt is not None, f"{rid}: a resource nobody wrote ({marker})"
            assert same_content(attempt.body, stored), (rid, attempt.body, stored)
            assert stored["meta"]["versionId"] == "1"
            if attempt.id == rid:
                verified.read_back.add(rid)
            else:
                # No answer reached the client (the server died, or the database went away around the commit).
                assert attempt.status is None or attempt.status >= 500, (rid, attempt.status)
                assert attempt.id is None, f"{rid}: acknowledged as {attempt.id}"
                history = http.get(f"/fhir/{resource_type}/{rid}/_history", headers=headers).json()
                assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"], history
                verified.unacknowledged_present.add(rid)
        # A refusal (4xx) wrote nothing.
        refused = {a.marker for a in markers.values() if a.status is not None and 400 <= a.status < 500}
        assert not refused, f"{len(refused)} writes refused with 4xx: {[w.statuses() for w in stack.writers]}"
        # Search finds exactly what is stored, patient by patient.
        for pid in stack.patients:
            answer = http.get(f"/fhir/{resource_type}", params={"patient": pid, "_summary": "count"},
                              headers=headers)
            assert answer.status_code == 200, answer.text
            expected = sum(1 for head in heads.values() if head[0] == pid)
            assert answer.json()["total"] == expected, (pid, answer.json()["total"], expected)
    verified.checks += 1


def settle_and_verify(stack: Stack, writers: Writers, verified: Verified, rng: random.Random) -> None:
    """After a fault: the writers paused after a last stretch of writes to the recovered service, every event
    numbered, and the store checked whole (verify_store)."""
    time.sleep(random.uniform(0.2, 0.5))
    writers.pause()
    wait_numbered(stack)
    verify_store(stack, verified)


def search_all(stack: Stack, resource_type: str = "Observation") -> dict[str, dict[str, Any]]:
    """Every resource of the type that search finds for the stack's patients, page by page."""
    found: dict[str, dict[str, Any]] = {}
    with httpx.Client(timeout=60) as http:
        headers = stack.headers()
        for pid in stack.patients:
            url: str | None = f"{stack.server.base}/fhir/{resource_type}?patient={pid}&_count=200"
            while url:
                page = http.get(url, headers=headers)
                assert page.status_code == 200, page.text
                bundle = page.json()
                for entry in bundle.get("entry", []):
                    found[entry["resource"]["id"]] = entry["resource"]
                url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def verify_search(stack: Stack, resource_type: str = "Observation") -> int:
    """Search returns every acknowledged write as sent, and nothing that is not stored; the count compared."""
    found = search_all(stack, resource_type)
    stored = {row[0] for row in stack.share_sql(
        "SELECT resource_id FROM resources WHERE resource_type = :t AND network_id = :n",
        t=resource_type, n=stack.network.id)}
    assert set(found) == stored, (len(found), len(stored))
    for rid, attempt in acknowledged(stack, resource_type).items():
        assert same_content(attempt.body, found[rid]), rid
    return len(found)

