"""Push benchmark: how fast a team message reaches every team member's open app, at a steady rate, over WebSocket.

    .venv/bin/python bench/push.py                  # about four minutes
    .venv/bin/python bench/push.py --seconds 60     # longer runs, steadier figures

1,000 WebSocket connections (one per user) in 50 teams of 20: each team is one patient's, its 20 members in an
organisation of their own on the patient's care team. A physician posts routine Communications at a steady --rate
(default 200 a second) for random patients, on a fixed schedule over keep-alive HTTP connections; every member of
the patient's team must receive the event. Each set-up first posts for --warmup seconds (3) unmeasured: a server's
first requests prepare its statements and fill its caches. Measured, per message: from the POST's answer (the server
answers after the commit) to the receipt by the last of its 20 members — p50/p99 — and, beside it, from when the
schedule sent the request (which adds the POST's own time). Also: server memory per connection (resident memory with
1,000 idle connections, less without), messages lost (must be 0), and the same load in four set-ups, all in the same
run:

  floor      bench/servers.py ``pushbare``: one process of the same framework inserting the JSON and fanning a frame
             out in-process to the patient's sockets — no token check, no event log, no access decision
  renkei     the application as deployed (--workers processes, Redis wake-ups): every write appends to the event
             log in its transaction, is numbered after its commit, and each frame is checked against the
             member's access at delivery
  stalled    the same with one client that stops reading after subscribing
  2 instances  two servers of one worker each on the same database and Redis; the clients and the posts split
             between them: a message accepted by one reaches the other's clients through the Redis wake-up

--topology: renkei runs as deployed, nginx (TLS) in front of two share processes (bench/fronted.py); every
set-up but the floor is then two instances, and '2 instances' pins the clients to instance A and the posts to B.

Targets (the [push] issue): p99 ≤ 50 ms; memory ≤ 40 KB a connection; one stalled client raises the others' p99
by at most 20%. permessage-deflate is off (services/serving.py WEBSOCKET_OPTIONS): frames are a few hundred bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import create_engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import client_tls, percentile
from bench.fronted import Fronted
from bench.load import open_stream, read_response
from bench.seed import seed
from bench.store import Server, analyze, bootstrap_network, scene
from services.share.access.models import TeamParticipant

PASSWORD = "bench password 2026"
TEAMS, TEAM_SIZE = 50, 20
TARGET_P99_MS = 50.0
TARGET_KB = 40.0
TARGET_STALL = 1.20
REDIS = "redis://127.0.0.1:6379/0"
# What counts as the server's memory per connection: a direct server, or the topology's share processes (the
# identity service, nginx and Redis hold no WebSocket).
APPLICATION = ("server", "share-a", "share-b")


@dataclass
class Member:
    token: str
    patient: str
    url: str
    cafile: str | None = None  # the certificate to trust for wss:// (bench/fronted.py)


def prepare(server: Server, scratch: Path) -> tuple[str, list[str], dict[str, str], str]:
    """A network: a clinic whose physician posts, and 50 offices of 20 nurses, each office on one patient's team.
    Returns (network, patients, user -> patient, physician username)."""
    network = f"bench-{uuid.uuid4().hex[:6]}"
    clinic = f"{network}-clinic"
    offices = [f"{network}-office-{k}" for k in range(TEAMS)]
    users = [{"username": f"{network}-doc", "id": "bench-author", "password": PASSWORD, "organization": clinic,
              "profession": "physician", "name": "ベンチ 医師"}]
    for k, office in enumerate(offices):
        users += [{"username": f"{network}-n{k}-{i}", "id": f"bench-n{k}-{i}", "password": PASSWORD,
                   "organization": office, "profession": "nurse", "name": f"ベンチ 看護師{k}-{i}"}
                  for i in range(TEAM_SIZE)]
    bootstrap_network(server, scratch, {
        "network": {"id": network, "name": "bench", "settings": {"mfa_required": False}},
        "organizations": [{"id": clinic, "name": "ベンチ診療所", "type": "clinic"}]
        + [{"id": office, "name": f"ベンチ訪問看護{k}", "type": "care-service"} for k, office in enumerate(offices)],
        "users": users,
    })
    patients, _, _ = seed(server.settings, network, TEAMS, 0, 0, 0, organization=clinic)
    rows = [{"care_team_id": f"team-{patient}", "position": 1, "network_id": network, "patient_id": patient,
             "team_status": "active", "kind": "organization", "member_id": office, "role": "visiting-nurse",
             "start": None, "end": None, "approved": True} for patient, office in zip(patients, offices, strict=True)]
    engine = create_engine(server.settings.resolved_share_database_url.replace("postgresql://",
                                                                                "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(insert(TeamParticipant), rows)
    engine.dispose()
    owners = {f"{network}-n{k}-{i}": patients[k] for k in range(TEAMS) for i in range(TEAM_SIZE)}
    return network, patients, owners, f"{network}-doc"


def login(server: Server, username: str) -> str:
    answer = httpx.post(f"{server.base}/auth/login", json={"username": username, "password": PASSWORD}, timeout=30,
                        verify=server.verify)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


# The clients: one process, one asyncio loop, every connection ----------------------------------------------------

def clients_process(members: list[Member], stalled: int, ready: Any, stop: Any, results: Any) -> None:
    results.put(asyncio.run(_clients(members, stalled, ready, stop)))


async def _clients(members: list[Member], stalled: int, ready: Any, stop: Any) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    received: list[list[tuple[str, float]]] = [[] for _ in members]
    gate = asyncio.Semaphore(50)
    sockets: list[Any] = [None] * len(members)

    async def open_one(index: int) -> None:
        member = members[index]
        async with gate:
            socket = await connect(member.url, compression=None, max_queue=16, open_timeout=60,
                                   ssl=client_tls(member.url.replace("wss://", "https://"), member.cafile))
            await socket.send(json.dumps({"type": "auth", "token": member.token}))
            await socket.recv()
            await socket.send(json.dumps({"type": "subscribe", "since": None, "patient": member.patient}))
            await socket.recv()
            sockets[index] = socket

    async def read(index: int) -> None:
        socket, mine = sockets[index], received[index]
        async for text in socket:
            frame = orjson.loads(text)
            if frame["type"] == "event":
                mine.append((frame["resource"]["id"], time.monotonic()))
            elif frame["type"] == "ping":
                await socket.send('{"type":"pong"}')

    await asyncio.gather(*(open_one(i) for i in range(len(members))))
    readers = [asyncio.create_task(read(i)) for i in range(len(members)) if i != stalled]
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    return {"received": received}


# The poster ---------------------------------------------------------------------------------------------------------

async def post_messages(bases: list[str], token: str, patients: list[str], rate: float, seconds: float,
                        cafile: str | None = None) -> list[tuple[str, str, float, float]]:
    """(message id, patient, due, answered) for every message the server accepted, posted on a fixed schedule
    over raw keep-alive connections (an HTTP client library would cost the 2-core machine more CPU than the server
    it measures); ``due`` is when the schedule sent it, so a late answer cannot hide the wait it caused."""
    connections = 16
    done: list[tuple[str, str, float, float]] = []
    failed: list[str] = []
    start = time.monotonic() + 0.2
    deadline = start + seconds

    async def one_connection(seed: int) -> None:
        rng = random.Random(seed)
        url = bases[seed % len(bases)]
        base = urlsplit(url)
        reader, writer = await open_stream(url, cafile)
        interval = connections / rate
        due = start + interval * seed / connections
        try:
            while due < deadline:
                patient = rng.choice(patients)
                body = orjson.dumps({
                    "resourceType": "Communication", "status": "completed", "priority": "routine",
                    "category": [{"coding": [{"system": "urn:renkei:codesystem:message-category",
                                              "code": "daily-update"}]}],
                    "subject": {"reference": f"Patient/{patient}"}, "sent": "2026-12-04T09:00:00+09:00",
                    "payload": [{"contentString": "本日の訪問: バイタル安定"}]})
                request = (f"POST /fhir/Communication HTTP/1.1\r\nHost: {base.netloc}\r\n"
                           f"Authorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(request)
                status, answer, closing = await read_response(reader)
                answered = time.monotonic()
                if status == 201:
                    done.append((str(orjson.loads(answer)["id"]), patient, due, answered))
                else:
                    failed.append(str(status))
                due += interval
                if closing:  # nginx after keepalive_requests: open another, as a client's pool does
                    writer.close()
                    reader, writer = await open_stream(url, cafile)
        finally:
            writer.close()

    await asyncio.gather(*(one_connection(seed) for seed in range(connections)))
    if failed:
        print(f"    {len(failed)} posts failed: {sorted(set(failed))}", flush=True)
    return done


# One set-up ----------------------------------------------------------------------------------------------------------

def measure(label: str, servers: list[Server], members_by_user: dict[str, str], tokens: dict[str, str],
            poster_token: str, patients: list[str], args: argparse.Namespace, stalled: bool,
            doors: tuple[str, str] | None = None) -> dict[str, Any]:
    """``doors``: (the clients' base URL, the posts' base URL) instead of the servers' own, spread."""
    users = sorted(members_by_user)
    client_bases = [doors[0]] if doors else [server.base for server in servers]
    post_bases = [doors[1]] if doors else [server.base for server in servers]
    cafile = servers[0].cafile
    members = [Member(tokens[user], members_by_user[user],
                      client_bases[i % len(client_bases)].replace("http", "ws", 1) + "/ws", cafile)
               for i, user in enumerate(users)]
    stalled_index = 0 if stalled else -1
    idle_mb = memory(servers)
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=clients_process, args=(members, stalled_index, ready, stop, results))
    process.start()
    if not ready.wait(180):
        raise RuntimeError("the clients did not connect")
    time.sleep(2.0)
    connected_mb = memory(servers)
    if args.warmup > 0:  # unmeasured: each server's first requests (its statements prepared, its caches filled)
        asyncio.run(post_messages(post_bases, poster_token, patients, args.rate, args.warmup, cafile))
        time.sleep(1.0)
    posted = asyncio.run(post_messages(post_bases, poster_token, patients, args.rate, args.seconds, cafile))
    if not posted:
        raise RuntimeError("no message was accepted")
    time.sleep(3.0)  # the last messages' deliveries
    stop.set()
    received = results.get(timeout=120)["received"]
    process.join(timeout=60)

    team_of: dict[str, list[int]] = {}
    for index, member in enumerate(members):
        team_of.setdefault(member.patient, []).append(index)
    arrivals = [dict(r) for r in received]
    from_answer, from_sending, lost = [], [], 0
    for message, patient, sent, answered in posted:
        times = [arrivals[i].get(message) for i in team_of[patient] if i != stalled_index]
        if any(t is None for t in times):
            lost += 1
            continue
        last = max(t for t in times if t is not None)
        from_answer.append(max(0.0, last - answered) * 1000)
        from_sending.append((last - sent) * 1000)
    figures = {
        "posted": len(posted), "delivered": len(from_answer), "lost": lost,
        "throughput": len(from_answer) / args.seconds,
        "p50_ms": statistics.median(from_answer) if from_answer else float("nan"),
        "p99_ms": percentile(from_answer, 0.99) if from_answer else float("nan"),
        "p50_from_sending_ms": statistics.median(from_sending) if from_sending else float("nan"),
        "p99_from_sending_ms": percentile(from_sending, 0.99) if from_sending else float("nan"),
        "p90_ms": percentile(from_answer, 0.90) if from_answer else float("nan"),
        "p95_ms": percentile(from_answer, 0.95) if from_answer else float("nan"),
        "samples_ms": [round(value, 2) for value in from_answer],  # for a histogram (results/push.json)
        # The application's processes (the target's); nginx, where it is in front, apart.
        "kb_per_connection": sum(connected_mb[part] - idle_mb[part] for part in APPLICATION if part in idle_mb)
        * 1024 / len(members),
    }
    if "nginx" in idle_mb:
        figures["kb_per_connection_nginx"] = (connected_mb["nginx"] - idle_mb["nginx"]) * 1024 / len(members)
    print(f"  {label:12} {figures['throughput']:6.0f} msg/s delivered  p50 {figures['p50_ms']:6.1f}  "
          f"p99 {figures['p99_ms']:6.1f} ms  (from sending: p50 {figures['p50_from_sending_ms']:6.1f}  "
          f"p99 {figures['p99_from_sending_ms']:6.1f})  {figures['kb_per_connection']:5.1f} KB/connection"
          + (f" (+ nginx {figures['kb_per_connection_nginx']:.1f})" if "kb_per_connection_nginx" in figures else "")
          + f"  lost {lost} of {len(posted)}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="posting time per set-up")
    parser.add_argument("--rate", type=float, default=200.0, help="messages posted a second")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of unmeasured posting at the same rate before each set-up's measured ones")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the renkei server")
    parser.add_argument("--pg", default="own", help="'own' (default): a cluster of this run's own; or an admin URL")
    parser.add_argument("--topology", action="store_true",
                        help="serve renkei as deployed: nginx (TLS) in front of an identity-service process and two "
                             "share-service processes (bench/fronted.py); '2 instances' then connects every client "
                             "to instance A and posts every message to instance B, through nginx; the floor stays "
                             "one direct process")
    parser.add_argument("--only", nargs="*", default=None, help="run only these set-ups (floor, renkei, stalled, "
                        "'2 instances'); the summary needs all four")
    args = parser.parse_args()
    results: dict[str, Any] = {"config": vars(args)}
    cheap = {"RENKEI_ARGON2_TIME_COST": "1", "RENKEI_ARGON2_MEMORY_KIB": "1024", "RENKEI_ARGON2_PARALLELISM": "1",
             "RENKEI_REDIS_URL": REDIS}
    with scene(args.pg) as where:
        renkei = where.primary("renkei", args.workers, topology=args.topology)
        renkei.env.update(cheap)  # the 1,001 logins are set-up, not measured
        _, patients, owners, doctor = prepare(renkei, where.scratch)
        print(f"1. {TEAMS} patients, each with a team of {TEAM_SIZE} nurses (one organisation per team); "
              f"{len(owners)} users", flush=True)
        analyze(where.urls["share"])
        renkei.start()
        try:
            tokens = {user: login(renkei, user) for user in owners}
            poster = login(renkei, doctor)
        finally:
            renkei.stop()
        print(f"2. {len(owners)} WebSocket connections; {args.rate:g} messages a second for {args.seconds:g} s "
              "per set-up; latency per message to the last of its 20 members", flush=True)
        floor = renkei.baseline("pushbare")
        floor.workers = 1
        setups: list[tuple[str, list[Server], bool]] = [("floor", [floor], False), ("renkei", [renkei], False),
                                                        ("stalled", [renkei], True)]
        doors: tuple[str, str] | None = None
        if isinstance(renkei, Fronted):  # already two instances behind nginx: pin the clients to A, the posts to B
            doors = (renkei.topology.door_url(0), renkei.topology.door_url(1))
            setups.append(("2 instances", [renkei], False))
        else:
            setups.append(("2 instances", two_instances(renkei, cheap), False))
        for label, servers, stalled in setups:
            if args.only is not None and label not in args.only:
                continue
            for server in servers:
                server.start()
            try:
                results[label] = measure(label, servers, owners, tokens, poster, patients, args, stalled,
                                         doors if label == "2 instances" else None)
            finally:
                for server in servers:
                    server.stop()
    if args.only is None:
        report(results)
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "push.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out / 'push.json'}")


def memory(servers: list[Server]) -> dict[str, float]:
    """Resident memory (MB) by part, summed over the servers."""
    total: dict[str, float] = {}
    for server in servers:
        for part, mb in server.rss_parts().items():
            total[part] = total.get(part, 0.0) + mb
    return total


def two_instances(renkei: Server, cheap: dict[str, str]) -> list[Server]:
    """Two servers of one worker each on ``renkei``'s databases and Redis. Instance one takes renkei's address (its
    public URL, the tokens' issuer, its identity service's JWKS, which instance two reads): one deployment, two
    share instances."""
    one, two = renkei.baseline("renkei"), renkei.baseline("renkei")
    one.port, one.base = renkei.port, renkei.base
    for server in (one, two):
        server.workers = 1
        server.env.update(cheap)
        server.env["RENKEI_PUBLIC_URL"] = renkei.base
    return [one, two]


def report(results: dict[str, Any]) -> None:
    renkei, stalled, floor = results["renkei"], results["stalled"], results["floor"]
    two = results["2 instances"]
    stall = stalled["p99_ms"] / renkei["p99_ms"]
    print("\nsummary")
    print(f"  p99 (answer to last receipt): renkei {renkei['p99_ms']:.1f} ms, floor {floor['p99_ms']:.1f} ms "
          f"({renkei['p99_ms'] / floor['p99_ms']:.1f}×), two instances {two['p99_ms']:.1f} ms")
    checks = [
        (f"p99 ≤ {TARGET_P99_MS:.0f} ms (one instance)", f"{renkei['p99_ms']:.1f} ms",
         renkei["p99_ms"] <= TARGET_P99_MS),
        (f"p99 ≤ {TARGET_P99_MS:.0f} ms (two instances)", f"{two['p99_ms']:.1f} ms", two["p99_ms"] <= TARGET_P99_MS),
        (f"memory ≤ {TARGET_KB:.0f} KB a connection", f"{renkei['kb_per_connection']:.1f} KB",
         renkei["kb_per_connection"] <= TARGET_KB),
        ("a stalled client raises p99 by ≤ 20%", f"{stall:.2f}×", stall <= TARGET_STALL),
        ("no message lost", str(sum(r["lost"] for r in (renkei, stalled, two))),
         not any(r["lost"] for r in (renkei, stalled, two))),
    ]
    for name, value, ok in checks:
        print(f"  target {name:42} {value:>10}   {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
