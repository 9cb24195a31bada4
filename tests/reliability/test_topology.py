"""The production topology end to end, through nginx (scripts/topology.py): nginx with TLS in front of one
identity-service process and two share-service processes (`renkei serve --service auth|share`), on PostgreSQL and
Redis, every one a real process.

The discharge scene across the instances: a hospital's system client (client credentials, private_key_jwt)
subscribes by rest-hook to "task changed" with its receiver on loopback and shares a discharge sheet through
instance A; a care manager's WebSocket (wss, through nginx, to instance B) is pushed the sheet and the
acknowledgement Task raised for her; she acknowledges the Task through nginx; the hospital's receiver is notified
of the Tasks raised and then of the acknowledgement. Prints what it checked and how long each step took
(`pytest -s`). In CI (CI=true) the script installs nginx and the test never skips; elsewhere it skips with the
reason when nginx cannot be had.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from bench.common import load_topology  # scripts/topology.py as a module
from services.auth.context import AuthContext
from services.share.push import protocol
from tests.conftest import require
from tests.fhir_helpers import FHIR_JSON, create, created_id, example, patient
from tests.infra import IN_CI, Network, postgres_available
from tests.planted import keep_logs
from tests.test_access_rules import add_to_team, consent, open_network, system_token
from tests.test_clients import ClientKey
from tests.test_push_socket import events_until
from tests.test_subscriptions import Receiver, focus_numbers, of_kind, status_of, subscription

TASK = "urn:renkei:codesystem:task-code"
SCOPES = "system/Subscription.crd system/Patient.rs system/QuestionnaireResponse.crus system/Task.rs"
Json = dict[str, Any]


class Gateway:
    """The topology seen as tests/infra.py's helpers see a server: HTTP clients (here through nginx, TLS), the
    settings the processes run with, and the identity service's context for bootstrapping a network."""

    def __init__(self, topology: Any) -> None:
        self.topology = topology
        self.settings = topology.settings()
        self.base_url = topology.base_url
        self._auth: AuthContext | None = None

    def client(self, address: str | None = None) -> Any:
        return self.topology.client()  # nginx sets X-Forwarded-For itself: an address could not be posed as

    @property
    def auth(self) -> AuthContext:
        if self._auth is None:
            self._auth = AuthContext.build(self.settings)
        return self._auth

    def close(self) -> None:
        if self._auth is not None:
            self._auth.db.dispose()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    require(postgres_available(), "PostgreSQL")
    module = load_topology()
    topology = module.Topology(keep=True, env={  # kept until its logs are copied for the end-of-run log scan
        "RENKEI_OUTBOUND_ALLOW_LOOPBACK": "true",  # the hospital's receiver is on 127.0.0.1 (tests only)
        "RENKEI_SUBSCRIPTION_POLL_SECONDS": "0.2",
        "RENKEI_JWKS_MIN_REFRESH_SECONDS": "0.5",
    })
    try:
        topology.start()
    except module.Unavailable as error:
        shutil.rmtree(topology.work, ignore_errors=True)
        if IN_CI:
            pytest.fail(f"CI=true but the topology cannot run: {error}")
        pytest.skip(f"the production topology cannot run here: {error}")
    timings = topology.timings
    print(f"\ntopology up in {timings['started']:.1f} s (nginx present or installed after "
          f"{timings['nginx_installed']:.1f} s): nginx {topology.base_url}, auth :{topology.auth_port}, "
          f"share :{topology.share_ports[0]} (A) and :{topology.share_ports[1]} (B), redis :{topology.redis_port}")
    found = Gateway(topology)
    yield found
    found.close()
    began = time.monotonic()
    topology.stop()
    print(f"topology torn down in {time.monotonic() - began:.1f} s")
    keep_logs(topology.work, "topology")
    shutil.rmtree(topology.work, ignore_errors=True)


def receive(socket: ClientConnection, timeout: float) -> Json:
    frame: Json = json.loads(socket.recv(timeout=timeout))
    return frame


def test_a_discharge_sheet_through_nginx_reaches_the_other_instance_and_its_acknowledgement_the_hospital(
        gateway: Gateway) -> None:
    topology = gateway.topology
    checked: list[str] = []
    timings: dict[str, float] = {}
    began = time.monotonic()

    # The scene: a patient with the home physician, a care manager, a hospital ward nurse and the hospital itself
    # on the team; the hospital's system client.
    key = ClientKey.generate("ES384")
    client_id = f"ehr-hospital-{uuid.uuid4().hex[:8]}"
    network: Network = open_network(gateway, clients=[{  # type: ignore[arg-type]
        "client_id": client_id, "organization": "hospital", "jwks": {"keys": [key.public_jwk()]}, "scope": SCOPES}],
        extra_users=[{"role": "ward", "organization": "hospital", "profession": "nurse"}])
    http = topology.client()
    doctor, manager = network.bearer("physician"), network.bearer("care_manager")
    pid = created_id(create(http, doctor, patient()))
    created_id(create(http, doctor, consent(pid)))
    for role, member in (("care-manager", f"Practitioner/{network.user('care_manager')['id']}"),
                         ("discharge-nurse", f"Practitioner/{network.user('ward')['id']}"),
                         ("discharge-nurse", f"Organization/{network.orgs['hospital']}")):
        add_to_team(http, doctor, pid, member, role)
    ehr = system_token(gateway, network, client_id, key, SCOPES)  # type: ignore[arg-type]
    checked.append("hospital system client: client_credentials with a private_key_jwt assertion, through nginx")
    timings["scene set up"] = time.monotonic() - began

    # The hospital's rest-hook Subscription to "task changed" for this patient, receiver on loopback.
    receiver = Receiver()
    try:
        at = time.monotonic()
        made = http.post("/fhir/Subscription", json=subscription(
            "urn:renkei:topic:task-changed", receiver.url("/tasks"), "full-resource", patient_id=pid),
            headers={**ehr, **FHIR_JSON})
        assert made.status_code == 201, made.text
        subscription_id = made.json()["id"]
        receiver.wait("/tasks", lambda found: len(of_kind("handshake")(found)) == 1)
        deadline = time.monotonic() + 15
        while http.get(f"/fhir/Subscription/{subscription_id}", headers=ehr).json()["status"] != "active":
            assert time.monotonic() < deadline, "the subscription did not become active"
            time.sleep(0.05)
        timings["subscription active (handshake received)"] = time.monotonic() - at
        checked.append("rest-hook Subscription to urn:renkei:topic:task-changed: handshake, then active")

        # The care manager's WebSocket, through nginx (wss), to instance B.
        ssl_context = topology.ssl_context()
        with connect(topology.ws_url(1), ssl=ssl_context, subprotocols=[protocol.SUBPROTOCOL],
                     open_timeout=10) as socket:
            socket.send(json.dumps({"type": "auth", "token": manager["Authorization"].removeprefix("Bearer ")}))
            assert receive(socket, 10)["type"] == "authenticated"
            socket.send(json.dumps({"type": "subscribe", "since": None}))
            assert receive(socket, 10)["type"] == "subscribed"
            checked.append("care manager's WebSocket: wss through nginx to share instance B, authenticated")

            # The hospital shares the discharge sheet through nginx, on instance A.
            sheet = example("DischargeSheet", pid, "stroke-gastrostomy-home", status="completed")
            with topology.client(topology.door_url(0)) as door_a:
                posted_at = time.monotonic()
                answer = create(door_a, ehr, sheet)
            assert answer.status_code == 201, answer.text
            sheet_id = created_id(answer)
            timings["sheet POST (instance A, through nginx)"] = time.monotonic() - posted_at
            checked.append("the hospital's system client shared a discharge sheet (201) through nginx to instance A")

            def pushed(found: list[Json]) -> bool:
                kinds = {f["resource"]["type"] for f in found}
                return {"QuestionnaireResponse", "Task"} <= kinds

            frames = events_until(socket, pushed, 15.0)
            timings["sheet → WebSocket event on instance B"] = time.monotonic() - posted_at
            assert ("QuestionnaireResponse", sheet_id) in {(f["resource"]["type"], f["resource"]["id"]) for f in frames}
            checked.append("instance B pushed the sheet and the care manager's acknowledgement Task over the "
                           "WebSocket (written on A, woken through Redis)")

            raised = focus_numbers(receiver.wait("/tasks", lambda b: len(focus_numbers(b)) >= 2))
            timings["sheet → hospital notified of the Tasks raised"] = time.monotonic() - posted_at
            tasks = http.get("/fhir/Task", params={"patient": pid, "code": f"{TASK}|acknowledge",
                                                   "status": "requested"}, headers=manager).json()
            owner = f"Practitioner/{network.user('care_manager')['id']}"
            owners = sorted(e["resource"]["owner"]["reference"] for e in tasks["entry"])
            assert owners == sorted([owner, f"Practitioner/{network.user('physician')['id']}"]), owners
            (mine,) = [e["resource"] for e in tasks["entry"] if e["resource"]["owner"]["reference"] == owner]
            assert f"Task/{mine['id']}" in {focus for _, focus in raised}
            assert mine["id"] in {f["resource"]["id"] for f in frames if f["resource"]["type"] == "Task"}
            checked.append("the sheet raised acknowledgement Tasks for the care manager and the physician; the "
                           "hospital's receiver was notified of them")

            # The care manager acknowledges, through nginx.
            acked_at = time.monotonic()
            done = http.post(f"/fhir/Task/{mine['id']}/$acknowledge", json={"resourceType": "Parameters"},
                             headers={**manager, **FHIR_JSON})
            assert done.status_code == 200, done.text
            assert done.json()["status"] == "completed"
            timings["$acknowledge POST (through nginx)"] = time.monotonic() - acked_at

            def acknowledged(bundles: list[Json]) -> bool:
                return any(e.get("resource", {}).get("id") == mine["id"]
                           and e["resource"].get("status") == "completed"
                           for b in of_kind("event-notification")(bundles) for e in b["entry"][1:])

            notified = receiver.wait("/tasks", acknowledged)
            timings["acknowledgement → hospital notified"] = time.monotonic() - acked_at
            last = [b for b in of_kind("event-notification")(notified) if acknowledged([b])][-1]
            assert int(status_of(last)["notificationEvent"][-1]["eventNumber"]) > max(n for n, _ in raised)
            checked.append("the hospital's receiver got the Task, status completed, in a notification numbered "
                           "after the Tasks raised")
            events_until(socket, lambda found: any(f["resource"]["id"] == mine["id"] and f["kind"] == "updated"
                                                   for f in found), 15.0)
            timings["acknowledgement → WebSocket event on instance B"] = time.monotonic() - acked_at
    finally:
        receiver.server.shutdown()

    # Each process serves its own service alone (`renkei serve --service`), asked directly on its loopback port.
    import httpx

    auth_direct, share_direct = (f"http://127.0.0.1:{port}" for port in (topology.auth_port, topology.share_ports[0]))
    assert httpx.get(f"{auth_direct}/auth/jwks.json").status_code == 200
    assert httpx.get(f"{auth_direct}/fhir/metadata").status_code == 404
    assert httpx.get(f"{share_direct}/fhir/metadata").status_code == 200
    assert httpx.get(f"{share_direct}/auth/jwks.json").status_code == 404
    assert set(httpx.get(f"{auth_direct}/readyz").json()["checks"]) == {"auth_database", "auth_signing_key", "redis"}
    assert set(httpx.get(f"{share_direct}/readyz").json()["checks"]) == {"share_database", "share_jwks", "redis"}
    checked.append("--service: the auth process serves /auth and no /fhir, a share process /fhir and no /auth; "
                   "each /readyz checks its own service")

    # nginx's own access log: which instance served what.
    log = (topology.work / "nginx-access.log").read_text()
    a, b = (f"upstream=127.0.0.1:{port}" for port in topology.share_ports)
    sheet_lines = [line for line in log.splitlines() if '"POST /fhir/QuestionnaireResponse ' in line]
    assert sheet_lines and all(a in line for line in sheet_lines), sheet_lines
    ws_lines = [line for line in log.splitlines() if '"GET /ws ' in line]
    assert ws_lines and all(b in line and re.search(r'" 101 ', line) for line in ws_lines), ws_lines
    auth_lines = [line for line in log.splitlines() if '"POST /auth/' in line]
    assert auth_lines and all(f"upstream=127.0.0.1:{topology.auth_port}" in line for line in auth_lines)
    checked.append("nginx's access log: the sheet went to A, the WebSocket (101) to B, /auth to the auth process")
    timings["scenario total"] = time.monotonic() - began

    print("\nchecked:")
    for line in checked:
        print(f"  - {line}")
    print("timings:")
    for name, seconds in timings.items():
        print(f"  {name:<52} {seconds * 1000:8.0f} ms")
