"""Outages under load. PostgreSQL stopped while clients write: the service answers 503 with Retry-After (an
OperationOutcome under /fhir), /readyz says not ready, and once the database is back the service serves again
without a restart and no acknowledged write is lost. Redis killed while messages are posted to two share
instances: every WebSocket client still receives every event (the hub's poll, RENKEI_EVENT_POLL_SECONDS, stands in
for the wake-ups), and all goes on when Redis is back.

RENKEI_RELIABILITY_CYCLES database outages (default 5; at most 20).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from tests.fhir_helpers import FHIR_JSON, observation
from tests.reliability.conftest import (
    CYCLES,
    MARKER_SYSTEM,
    Stack,
    Verified,
    Writers,
    build_stack,
    settle_and_verify,
    tear_down,
    verify_search,
    verify_store,
    wait_numbered,
)

MESSAGE_CATEGORY = "urn:renkei:codesystem:message-category"


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two `renkei serve` instances on one cluster, with a Redis of their own; the hub polls every 0.5 s."""
    built = build_stack(tmp_path_factory.mktemp("outage"), instances=2, redis=True, event_poll_seconds=0.5)
    yield built
    tear_down(built)


def probe(http: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = http.request(method, url, **kwargs)
    return answer, time.monotonic() - started


def test_database_outage_answers_503_with_retry_after_and_the_service_recovers_without_a_restart(
        two_instances: Stack) -> None:
    stack = two_instances
    rng = random.Random(20261207)
    outages = min(CYCLES, 20)
    writers = Writers(stack, [stack.server.base]).start()
    verified = stack.verified
    pids = [server.process.pid for server in stack.servers if server.process]
    probes, slowest, ready_after, written_after = 0, 0.0, [], []
    started = time.monotonic()
    try:
        for _ in range(outages):
            writers.resume()
            time.sleep(rng.uniform(0.3, 1.0))
            known = next(iter(writers.acknowledged()))
            stack.pg.stop("fast")
            with httpx.Client(base_url=stack.server.base, timeout=15) as http:
                headers = stack.headers()
                for _ in range(3):
                    answers = [
                        probe(http, "POST", "/fhir/Observation", json=observation(stack.patients[0]),
                              headers={**headers, **FHIR_JSON}),
                        probe(http, "GET", f"/fhir/Observation/{known}", headers=headers),
                        probe(http, "GET", "/fhir/Observation", params={"patient": stack.patients[0]},
                              headers=headers),
                    ]
                    for answer, seconds in answers:
                        probes += 1
                        slowest = max(slowest, seconds)
                        assert answer.status_code == 503, (answer.request.url, answer.status_code, answer.text)
                        assert int(answer.headers["retry-after"]) > 0
                        outcome = answer.json()
                        assert outcome["resourceType"] == "OperationOutcome"
                        assert outcome["issue"][0]["code"] == "transient"
                    login, seconds = probe(http, "POST", "/auth/login",
                                           json={"username": "nobody", "password": "x" * 12})
                    assert login.status_code == 503 and login.headers["retry-after"], login.text
                    assert login.json()["error"] == "temporarily_unavailable"
                    for server in stack.servers:
                        ready, _ = probe(http, "GET", f"{server.base}/readyz")
                        assert ready.status_code == 503 and ready.json()["checks"]["share_database"] != "ok"
                    assert http.get("/healthz").status_code == 200
                    slowest = max(slowest, seconds)
                    time.sleep(rng.uniform(0.1, 0.4))
                count = len(writers.attempts)
                stack.pg.start()
                back = time.monotonic()
                while http.get("/readyz").status_code != 200:
                    assert time.monotonic() - back < 30, "not ready 30 s after the database came back"
                    time.sleep(0.02)
                ready_after.append(time.monotonic() - back)
                while not writers.acknowledged_after(count):
                    assert time.monotonic() - back < 30, "no write acknowledged 30 s after the database came back"
                    time.sleep(0.02)
                written_after.append(time.monotonic() - back)
            settle_and_verify(stack, writers, verified, rng)
        writers.pause()
        searched = verify_search(stack)
    finally:
        writers.stop()
    assert pids == [server.process.pid for server in stack.servers if server.process]
    assert all(server.process and server.process.poll() is None for server in stack.servers)
    acked, statuses = writers.acknowledged(), writers.statuses()
    refused = [a for a in writers.attempts if a.status == 503]
    print(f"\n[outage: PostgreSQL stopped] {outages} outages under {writers.threads} writing clients in "
          f"{time.monotonic() - started:.1f} s, neither of its two instances restarted: {probes} probes (create, read, "
          f"search) answered 503 + Retry-After + OperationOutcome, /auth/login 503, both /readyz 503 each time, "
          f"slowest answer "
          f"{slowest:.2f} s; writers: {len(writers.attempts)} posted, {len(acked)} acknowledged and "
          f"{len(set(acked) & verified.read_back)} read back as sent, {len(refused)} answered 503; {searched} found by "
          f"search; "
          f"after the database came back: ready in max {max(ready_after):.2f} s, next acknowledged write in max "
          f"{max(written_after):.2f} s; statuses {statuses}")
    assert set(statuses) <= {201, 503}, statuses  # always an answer; never a 500
    assert all(a.retry_after for a in refused)
    assert set(acked) <= verified.read_back
    assert slowest < 5, "an answer during the outage took too long (hung on the database?)"


# --- Redis away -------------------------------------------------------------------------------------------------


@dataclass
class Listener:
    """A WebSocket client that stays connected (reconnecting from its cursor if the server closes) and keeps
    every event frame with the time it came."""

    name: str
    url: str
    token: str
    cursor: int = 0
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with connect(self.url, open_timeout=5) as socket:
                    socket.send(json.dumps({"type": "auth", "token": self.token}))
                    socket.send(json.dumps({"type": "subscribe", "since": self.cursor}))
                    while not self.stop.is_set():
                        try:
                            frame = json.loads(socket.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        if frame["type"] == "event":
                            self.frames.append((time.monotonic(), frame))
                            self.cursor = max(self.cursor, int(frame["seq"]))
                            socket.send(json.dumps({"type": "ack", "seq": self.cursor}))
                        elif frame["type"] == "subscribed":
                            self.subscribed.set()
                        elif frame["type"] == "ping":
                            socket.send(json.dumps({"type": "pong"}))
            except (ConnectionClosed, InvalidHandshake, OSError):
                pass
            if not self.stop.is_set():
                self.reconnects += 1
                time.sleep(0.1)

    def received(self, resource_type: str) -> dict[str, list[tuple[int, float]]]:
        """resource id → [(seq, received at)] for every event of the type."""
        seen: dict[str, list[tuple[int, float]]] = {}
        for at, frame in list(self.frames):
            if frame["resource"]["type"] == resource_type:
                seen.setdefault(frame["resource"]["id"], []).append((int(frame["seq"]), at))
        return seen




def test_redis_outage_loses_no_event_for_websocket_clients_of_two_instances(two_instances: Stack) -> None:
    stack = two_instances
    assert stack.redis is not None
    sender = {"reference": f"Practitioner/{stack.network.user('writer')['id']}"}

    def message(pid: str, marker: str, rng: random.Random) -> dict[str, Any]:
        return {"resourceType": "Communication", "status": "completed", "priority": "routine",
                "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
                "category": [{"coding": [{"system": MESSAGE_CATEGORY, "code": "daily-update"}]}],
                "subject": {"reference": f"Patient/{pid}"}, "sent": "2026-12-04T09:00:00+09:00",
                "sender": sender, "payload": [{"contentString": f"訪問しました ({rng.randint(1, 99)})"}]}

    token = stack.network.login("writer")["access_token"]
    listeners = [Listener(f"{name}{i}", server.ws, token) for i in range(2)
                 for name, server in zip("AB", stack.servers, strict=True)]
    threads = [threading.Thread(target=listener.run, daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    for listener in listeners:
        assert listener.subscribed.wait(20), listener.name
    # Written on A only: B's clients learn of each event through B's hub, which A wakes over Redis — or which
    # finds it at its next poll when Redis is away.
    writers = Writers(stack, [stack.servers[0].base], make=message, threads=2, pause_between=0.02).start()
    phases: dict[str, tuple[float, float]] = {}
    try:
        mark = time.monotonic()
        time.sleep(2)
        phases["with Redis"] = (mark, time.monotonic())
        stack.redis.kill()
        mark = time.monotonic()
        time.sleep(4)
        with httpx.Client(timeout=10) as http:
            readiness = [http.get(f"{server.base}/readyz").json()["checks"].get("redis") for server in stack.servers]
        phases["Redis killed"] = (mark, time.monotonic())
        stack.redis.start()
        mark = time.monotonic()
        time.sleep(1.5)  # each hub subscribes again within a second (Hub.listen)
        phases["Redis back, first 1.5 s"] = (mark, time.monotonic())
        mark = time.monotonic()
        time.sleep(1.5)
        phases["Redis back, then"] = (mark, time.monotonic())
        writers.pause()
        acked = writers.acknowledged()
        deadline = time.monotonic() + 20
        while any(set(acked) - set(listener.received("Communication")) for listener in listeners):
            assert time.monotonic() < deadline, [len(set(acked) - set(x.received("Communication")))
                                                 for x in listeners]
            time.sleep(0.1)
    finally:
        writers.stop()
        for listener in listeners:
            listener.stop.set()
        for thread in threads:
            thread.join(timeout=10)

    wait_numbered(stack)
    verify_store(stack, Verified(), "Communication")
    statuses = writers.statuses()
    assert set(statuses) == {201}, statuses  # Redis away stops no write
    latency: dict[str, float] = {}  # on B: the other instance's events
    for listener in listeners:
        seen = listener.received("Communication")
        assert set(seen) == set(acked), listener.name  # every event, none that was not written
        assert all(len({seq for seq, _ in deliveries}) == 1 for deliveries in seen.values())  # one seq each
        seqs = [int(frame["seq"]) for _, frame in listener.frames]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "out of order or twice"
        if listener.url != stack.servers[1].ws:
            continue
        for rid, attempt in acked.items():
            delay = seen[rid][0][1] - attempt.answered_at
            for phase, (start, end) in phases.items():  # a write just before a change may go either way
                if start <= attempt.answered_at < end - 0.2:
                    latency[phase] = max(latency.get(phase, 0.0), delay)
    shown = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in latency.items())
    print(f"\n[outage: Redis killed] two share instances, {len(listeners)} WebSocket clients (two on each): "
          f"{len(writers.attempts)} messages posted to A, {len(acked)} acknowledged (all 201, Redis or not); every "
          f"client received every one's event, once, in order ({sum(x.reconnects for x in listeners)} reconnects); "
          f"/readyz's redis check while it was away: {readiness}; slowest delivery on B after A's "
          f"acknowledgement: {shown}")
    assert all(check != "ok" for check in readiness)
    for server in stack.servers:  # each hub lost its wake-ups and had them again
        log = server.log.read_text(errors="replace")
        assert "event_wakeups_unavailable" in log and "event_wakeups_restored" in log, server.log
    assert latency["Redis killed"] < 3, latency  # the poll (0.5 s) carries the events
