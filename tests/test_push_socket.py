"""The event log and WebSocket /ws, end to end over real sockets, on SQLite and PostgreSQL: every committed write
appends an event in its transaction and nothing else does; a subscriber is sent what it may see, in order, replayed
from its cursor and then live; the access decision of the moment filters every event; and the handshake, the
authentication and the protocol refuse what they must with the documented close codes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from services.share.push import protocol
from tests.conftest import _migrated as migrated
from tests.fhir_helpers import FHIR_JSON, create, created_id, observation, patient
from tests.infra import LiveServer, Network, free_port, settings_for_tests
from tests.test_access_rules import add_to_team, consent, open_network

Json = dict[str, Any]


def ws_url(server: LiveServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


def token_of(network: Network, role: str) -> str:
    return network.bearer(role)["Authorization"].removeprefix("Bearer ")


_OPEN: list[ClientConnection] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def opened(server: LiveServer, **options: Any) -> ClientConnection:
    """A connection, closed when the test ends at the latest."""
    socket = connect(ws_url(server), open_timeout=10, **options).__enter__()
    _OPEN.append(socket)
    return socket


def subscribed(server: LiveServer, token: str, since: int | None = None) -> ClientConnection:
    socket = opened(server, subprotocols=[protocol.SUBPROTOCOL])
    socket.send(json.dumps({"type": "auth", "token": token}))
    assert receive(socket)["type"] == "authenticated"
    socket.send(json.dumps({"type": "subscribe", "since": since}))
    frame = receive(socket)
    assert frame["type"] == "subscribed"
    return socket


def receive(socket: ClientConnection, timeout: float = 10.0) -> Json:
    frame: Json = json.loads(socket.recv(timeout=timeout))
    return frame


def events_until(socket: ClientConnection, wanted: set[tuple[str, str]] | Callable[[list[Json]], bool],
                 timeout: float = 10.0) -> list[Json]:
    """Event frames received until every (type, id) in ``wanted`` has come (or ``wanted(found)`` holds); heartbeats
    answered, an error frame fails the test."""
    if not callable(wanted):
        wanted_ids = wanted

        def wanted(found: list[Json]) -> bool:
            return not wanted_ids - {(f["resource"]["type"], f["resource"]["id"]) for f in found}

    found: list[Json] = []
    deadline = time.monotonic() + timeout
    while not wanted(found):
        frame = receive(socket, max(0.1, deadline - time.monotonic()))
        if frame["type"] == "event":
            found.append(frame)
        elif frame["type"] == "ping":
            socket.send(json.dumps({"type": "pong"}))
        elif frame["type"] == "error":
            raise AssertionError(frame, found)
    return found


def quiet(socket: ClientConnection, seconds: float = 1.5) -> list[Json]:
    """Every event frame that arrives within ``seconds``."""
    found: list[Json] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = receive(socket, left)
        except TimeoutError:
            break
        if frame["type"] == "event":
            found.append(frame)
        elif frame["type"] == "ping":
            socket.send(json.dumps({"type": "pong"}))
    return found


def closed_with(socket: ClientConnection, timeout: float = 10.0) -> int | None:
    """The close code the server ends with (its heartbeats answered meanwhile)."""
    try:
        while True:
            if json.loads(socket.recv(timeout=timeout))["type"] == "ping":
                socket.send(json.dumps({"type": "pong"}))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


class Team:
    def __init__(self, server: LiveServer) -> None:
        self.network = open_network(server)
        self.http = server.client()
        self.doctor = self.network.bearer("physician")
        self.pid = created_id(create(self.http, self.doctor, patient()))
        created_id(create(self.http, self.doctor, consent(self.pid)))
        add_to_team(self.http, self.doctor, self.pid, f"Practitioner/{self.network.user('nurse')['id']}")


def events_in_log(server: LiveServer, resource_id: str) -> list[tuple[Any, ...]]:
    engine = create_engine(server.settings.resolved_share_database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(
                "SELECT resource_type, version, kind, patient_id FROM event_log WHERE resource_id = :id ORDER BY id"),
                {"id": resource_id}))
    finally:
        engine.dispose()


def test_each_committed_write_appends_one_event_and_a_refused_write_none(server: LiveServer) -> None:
    team = Team(server)
    created = created_id(create(team.http, team.doctor, observation(team.pid)))
    body = {**observation(team.pid, 38.2), "id": created}
    assert team.http.put(f"/fhir/Observation/{created}", json=body, headers={**team.doctor, **FHIR_JSON}
                         ).status_code == 200
    assert team.http.delete(f"/fhir/Observation/{created}", headers=team.doctor).status_code in (200, 204)
    assert events_in_log(server, created) == [("Observation", 1, "created", team.pid),
                                              ("Observation", 2, "updated", team.pid),
                                              ("Observation", 3, "deleted", team.pid)]
    # Refused writes (a bad body, a patient that does not exist) leave no event.
    engine = create_engine(server.settings.resolved_share_database_url)
    with engine.connect() as connection:
        before = connection.scalar(text("SELECT count(*) FROM event_log"))
    broken = {**observation(team.pid), "status": "no-such-status"}
    assert create(team.http, team.doctor, broken).status_code in (400, 422)
    assert create(team.http, team.doctor, observation("no-such-patient")).status_code >= 400
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM event_log")) == before
        # Ids only: no column of the log holds a body.
        columns = set(connection.execute(text("SELECT * FROM event_log LIMIT 1")).keys())
    engine.dispose()
    assert columns == {"id", "seq", "network_id", "patient_id", "resource_type", "resource_id", "version", "kind",
                       "author_organization", "draft", "recorded"}


def test_a_team_member_is_sent_each_write_live_and_an_outsider_nothing(server: LiveServer) -> None:
    team = Team(server)
    nurse = subscribed(server, token_of(team.network, "nurse"))
    outsider = subscribed(server, token_of(team.network, "care_manager"))  # same network, not on the team
    try:
        ids = [created_id(create(team.http, team.doctor, observation(team.pid, 36.0 + i / 10))) for i in range(3)]
        frames = events_until(nurse, {("Observation", i) for i in ids})
        assert [f["resource"]["id"] for f in frames if f["resource"]["type"] == "Observation"] == ids
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert frames[0] == {"type": "event", "seq": frames[0]["seq"], "kind": "created", "patient": team.pid,
                             "resource": {"type": "Observation", "id": ids[0], "version": "1"}}
        assert quiet(outsider) == []
    finally:
        nurse.close()
        outsider.close()


def test_a_client_resuming_from_its_cursor_misses_nothing_and_gets_nothing_twice(server: LiveServer) -> None:
    team = Team(server)
    nurse_token = token_of(team.network, "nurse")
    socket = subscribed(server, nurse_token)
    first = created_id(create(team.http, team.doctor, observation(team.pid)))
    (seen,) = [f for f in events_until(socket, {("Observation", first)}) if f["resource"]["id"] == first]
    socket.send(json.dumps({"type": "ack", "seq": seen["seq"]}))
    socket.close()
    missed = [created_id(create(team.http, team.doctor, observation(team.pid))) for _ in range(3)]
    again = subscribed(server, nurse_token, since=seen["seq"])
    try:
        live = created_id(create(team.http, team.doctor, observation(team.pid)))
        frames = events_until(again, {("Observation", i) for i in [*missed, live]})
        frames += quiet(again, 1.0)
        ids = [f["resource"]["id"] for f in frames]
        assert ids == [*missed, live]  # replayed in order, then live, each once
        assert all(f["seq"] > seen["seq"] for f in frames)
    finally:
        again.close()


def test_leaving_the_team_stops_the_flow_at_once(server: LiveServer) -> None:
    team = Team(server)
    socket = subscribed(server, token_of(team.network, "nurse"))
    try:
        one = created_id(create(team.http, team.doctor, observation(team.pid)))
        events_until(socket, {("Observation", one)})
        nurse = f"Practitioner/{team.network.user('nurse')['id']}"
        add_to_team(team.http, team.doctor, team.pid, nurse, end="2026-01-02")  # her membership ended
        quiet(socket, 1.0)
        after = created_id(create(team.http, team.doctor, observation(team.pid)))
        assert after not in [f["resource"]["id"] for f in quiet(socket, 2.0)]
    finally:
        socket.close()


def test_the_token_may_travel_as_a_subprotocol_never_needing_the_url(server: LiveServer) -> None:
    team = Team(server)
    token = token_of(team.network, "nurse")
    socket = opened(server, subprotocols=[protocol.SUBPROTOCOL, protocol.TOKEN_PREFIX + token])
    try:
        assert socket.subprotocol == protocol.SUBPROTOCOL  # the token is never echoed back
        assert receive(socket)["type"] == "authenticated"
        socket.send(json.dumps({"type": "subscribe", "since": None}))
        assert receive(socket)["type"] == "subscribed"
        socket.send(json.dumps({"type": "ping"}))
        assert receive(socket) == {"type": "pong"}
    finally:
        socket.close()


def test_a_foreign_origin_is_refused_at_the_handshake(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        opened(server, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    opened(server, origin=server.settings.public_url).close()


@pytest.mark.parametrize("frame, code", [
    ({"type": "auth", "token": "not-a-token"}, protocol.UNAUTHENTICATED),
    ({"type": "subscribe", "since": None}, protocol.UNAUTHENTICATED),  # before authenticating
    ("this is not JSON", protocol.PROTOCOL_ERROR),
])
def test_what_is_refused_is_closed_with_its_documented_code(server: LiveServer, frame: Any, code: int) -> None:
    socket = opened(server)
    socket.send(frame if isinstance(frame, str) else json.dumps(frame))
    error = receive(socket)
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert closed_with(socket) == code


def test_a_bad_subscribe_and_an_unknown_frame_close_with_protocol_error(server: LiveServer) -> None:
    team = Team(server)
    token = token_of(team.network, "nurse")
    socket = opened(server)
    socket.send(json.dumps({"type": "auth", "token": token}))
    receive(socket)
    socket.send(json.dumps({"type": "subscribe", "since": "yesterday"}))
    assert receive(socket)["code"] == protocol.PROTOCOL_ERROR
    assert closed_with(socket) == protocol.PROTOCOL_ERROR
    socket = subscribed(server, token)
    socket.send(json.dumps({"type": "shout"}))
    assert closed_with(socket) == protocol.PROTOCOL_ERROR


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """SQLite, with a queue of one event per connection, a one-second heartbeat and twenty-second tokens (room
    for a slow login under the parallel suite)."""
    port = free_port()
    settings = settings_for_tests(str(tmp_path_factory.mktemp("strict")), port, ws_queue_events=1,
                                  ws_heartbeat_seconds=1.0, access_token_ttl_seconds=20)
    migrated(settings.resolved_auth_database_url, "auth")
    migrated(settings.resolved_share_database_url, "share")
    live = LiveServer(settings, port).start()
    yield live
    live.stop()


def test_a_client_too_slow_for_its_queue_is_closed_and_resumes_from_its_cursor(strict_server: LiveServer) -> None:
    team = Team(strict_server)
    token = token_of(team.network, "nurse")
    socket = subscribed(strict_server, token)
    since = 0
    entries = [{"resource": observation(team.pid, 36.0 + i / 10), "request": {"method": "POST", "url": "Observation"}}
               for i in range(4)]
    answer = team.http.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                            headers={**team.doctor, **FHIR_JSON})
    assert answer.status_code == 200, answer.text
    ids = [entry["response"]["location"].split("Observation/")[1].split("/")[0] for entry in answer.json()["entry"]]
    # Four events offered at once to a queue of one: the connection is closed, told to resume.
    frames: list[Json] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = receive(socket)
            frames.append(frame)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.TOO_SLOW, frames
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == protocol.TOO_SLOW
    delivered = [f for f in frames if f["type"] == "event"]
    socket_cursor = delivered[-1]["seq"] if delivered else since
    # The replay reads the log, not the queue.
    again = subscribed(strict_server, token_of(team.network, "nurse"), since=socket_cursor)
    try:
        resumed = events_until(again, {("Observation", i) for i in ids if i not in
                                       [f["resource"]["id"] for f in delivered]})
        got = [f["resource"]["id"] for f in delivered + resumed if f["resource"]["type"] == "Observation"]
        assert got == ids  # each once, in order, across the close
    finally:
        again.close()


def test_an_expiring_token_closes_the_socket_and_a_renewed_one_keeps_it(strict_server: LiveServer) -> None:
    team = Team(strict_server)
    socket = subscribed(strict_server, token_of(team.network, "nurse"))
    assert closed_with(socket, timeout=30) == protocol.TOKEN_EXPIRED
    socket = opened(strict_server)
    socket.send(json.dumps({"type": "auth", "token": token_of(team.network, "nurse")}))
    first_expiry = receive(socket)["expires_at"]
    socket.send(json.dumps({"type": "subscribe", "since": None}))
    quiet(socket, 5.0)
    with ThreadPoolExecutor(1) as pool:  # the heartbeats are answered while the new token is fetched
        renewed = pool.submit(token_of, team.network, "nurse")
        while not renewed.done():
            quiet(socket, 0.2)
    socket.send(json.dumps({"type": "auth", "token": renewed.result()}))
    while (frame := receive(socket))["type"] != "authenticated":
        assert frame["type"] in ("ping", "event"), frame
    assert frame["expires_at"] >= first_expiry + 3, "the login took too long for this test's timing"
    quiet(socket, first_expiry + 1.5 - time.time())  # past the first token's expiry
    socket.send(json.dumps({"type": "ping"}))
    while (frame := receive(socket))["type"] == "ping":
        socket.send(json.dumps({"type": "pong"}))
    assert frame == {"type": "pong"}  # the connection outlived the token it opened with


def test_a_client_that_stops_answering_heartbeats_is_dropped(strict_server: LiveServer) -> None:
    team = Team(strict_server)
    socket = subscribed(strict_server, token_of(team.network, "nurse"))
    assert receive(socket)["type"] == "ping"  # the server's heartbeat, every second here
    with pytest.raises(ConnectionClosed) as closed:  # we never answer
        while True:
            receive(socket, 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.HEARTBEAT_MISSED


def test_connections_opened_together_are_not_pinged_together(strict_server: LiveServer) -> None:
    """A connection's first heartbeat comes at a random point of the period's second half (push/ws.py): tablets
    reconnecting together after a restart must not be pinged, and answer, in one tick every period. Here the
    period is one second, so without that each first ping would come a full second or more after its connect."""
    token = token_of(Team(strict_server).network, "nurse")

    def first_ping_after_connecting() -> float:
        began = time.monotonic()  # before the handshake: no later than the server's own start of the period
        socket = subscribed(strict_server, token)
        while receive(socket, 5)["type"] != "ping":
            pass
        return time.monotonic() - began

    with ThreadPoolExecutor(10) as pool:
        delays = list(pool.map(lambda _: first_ping_after_connecting(), range(10)))
    # Each first ping is due between 0.5 and 1 s and sent at the hub's next tick (every 0.25 s here): ten all at a
    # second or later would have about one chance in a million.
    assert min(delays) < 1.0, sorted(delays)
