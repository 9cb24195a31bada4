"""Topic-based rest-hook Subscriptions end to end, over real HTTP with a real receiver on 127.0.0.1: the
handshake makes a subscription active; a shared sheet, a posted message and a changed Task each reach the
endpoint as an event-notification with their event number and focus, id-only or in full; a failing endpoint is
retried with backoff and loses nothing, one that keeps failing goes to error; $status and $events; a client never
hears of a patient it may not read; bad Subscriptions are refused with an OperationOutcome, never a 500. On SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from services.kit.errors import BadRequest
from services.kit.outbound import checked_endpoint
from services.share.subscriptions.requests import FILTER_CRITERIA, HEARTBEAT_PERIOD, PAYLOAD_CONTENT
from tests.conftest import _migrated as migrated
from tests.fhir_helpers import FHIR_JSON, create, created_id, patient, response
from tests.infra import LiveServer, Network, PostgresDatabases, free_port, settings_for_tests
from tests.test_access_rules import add_to_team, consent, open_network, system_token
from tests.test_clients import ClientKey

Json = dict[str, Any]
SCOPES = ("system/Subscription.crd system/Patient.rs system/QuestionnaireResponse.rs system/Communication.rs "
          "system/Task.rs")
CATEGORY = "urn:renkei:codesystem:message-category"


# The receiver --------------------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POSTed Bundle by path; ``failing[path]`` answers that many
    requests with 500 first (-1: always)."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[float, Json, dict[str, str]]]] = {}
        self.failing: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    left = receiver.failing.get(self.path, 0)
                    if left:
                        receiver.failing[self.path] = left - 1 if left > 0 else left
                    receiver.received.setdefault(self.path, []).append(
                        (time.monotonic(), json.loads(body), dict(self.headers)))
                self.send_response(500 if left else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bundles(self, path: str) -> list[Json]:
        with self.lock:
            return [bundle for _, bundle, _ in self.received.get(path, [])]

    def wait(self, path: str, done: Callable[[list[Json]], bool], timeout: float = 15.0) -> list[Json]:
        deadline = time.monotonic() + timeout
        while not done(found := self.bundles(path)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver did not get what was expected at {path}: {found}")
            time.sleep(0.05)
        return found


@pytest.fixture(scope="module")
def receiver(hook_server: LiveServer) -> Iterator[Receiver]:
    """One per server, so each backend's deliveries are counted apart."""
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def hook_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Loopback endpoints allowed; passes every 0.1 s, retries after 0.3 s doubling, error after 3 failures."""
    port = free_port()
    overrides = {}
    if request.param == "postgresql":
        databases: PostgresDatabases = request.getfixturevalue("pg_databases")
        overrides = {"auth_database_url": databases.create("auth"), "share_database_url": databases.create("share")}
    settings = settings_for_tests(str(tmp_path_factory.mktemp("hooks")), port, outbound_allow_loopback=True,
                                  event_poll_seconds=0.1, subscription_poll_seconds=0.1,
                                  subscription_retry_seconds=0.3, subscription_max_failures=3, **overrides)
    migrated(settings.resolved_auth_database_url, "auth")
    migrated(settings.resolved_share_database_url, "share")
    live = LiveServer(settings, port).start()
    yield live
    live.stop()


# A hospital system in a patient's team ------------------------------------------------------------------------


class Hospital:
    """A patient whose team includes the hospital (consent given), the hospital's system client, and a second
    system client of the visiting-nurse station, which is not in the team."""

    def __init__(self, server: LiveServer) -> None:
        key = ClientKey.generate("ES384")
        tag = uuid.uuid4().hex[:8]
        clients = [{"client_id": f"ehr-{org}-{tag}", "organization": org, "jwks": {"keys": [key.public_jwk()]},
                    "scope": SCOPES} for org in ("hospital", "station")]
        self.network: Network = open_network(server, clients=clients)
        self.http = server.client()
        self.doctor = self.network.bearer("physician")
        self.ehr = system_token(server, self.network, f"ehr-hospital-{tag}", key, SCOPES)
        self.outsider = system_token(server, self.network, f"ehr-station-{tag}", key, SCOPES)
        self.narrow = system_token(server, self.network, f"ehr-hospital-{tag}", key,
                                   "system/Subscription.crd")
        self.pid = created_id(create(self.http, self.doctor, patient()))
        created_id(create(self.http, self.doctor, consent(self.pid)))
        add_to_team(self.http, self.doctor, self.pid, f"Organization/{self.network.orgs['hospital']}",
                    role="discharge-nurse")

    def subscribe(self, who: dict[str, str], topic: str, endpoint: str, content: str = "id-only",
                  **extra: Any) -> Any:
        return self.http.post("/fhir/Subscription", json=subscription(topic, endpoint, content, **extra),
                              headers={**who, **FHIR_JSON})

    def message(self, text: str) -> str:
        return created_id(create(self.http, self.doctor, {
            "resourceType": "Communication", "status": "completed",
            "category": [{"coding": [{"system": CATEGORY, "code": "daily-update"}]}],
            "subject": {"reference": f"Patient/{self.pid}"}, "sent": "2026-12-04T09:00:00+09:00",
            "payload": [{"contentString": text}]}))


def subscription(topic: str, endpoint: str, content: str = "id-only", *, patient_id: str | None = None,
                 heartbeat: int | None = None, headers: list[str] | None = None) -> Json:
    channel: Json = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                     "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]}}
    if heartbeat is not None:
        channel["extension"] = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat}]
    if headers:
        channel["header"] = headers
    body: Json = {"resourceType": "Subscription", "status": "requested", "reason": "退院連携", "criteria": topic,
                  "channel": channel}
    if patient_id:
        body["_criteria"] = {"extension": [{"url": FILTER_CRITERIA, "valueString": f"patient=Patient/{patient_id}"}]}
    return body


@pytest.fixture
def hospital(hook_server: LiveServer) -> Hospital:
    return Hospital(hook_server)


def status_of(bundle: Json) -> Json:
    first: Json = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "SubscriptionStatus"
    return first


def of_kind(kind: str) -> Callable[[list[Json]], list[Json]]:
    return lambda bundles: [b for b in bundles if status_of(b)["type"] == kind]


def focus_numbers(bundles: list[Json]) -> list[tuple[int, str]]:
    """(eventNumber, focus "Type/id") of every notification event received, in order."""
    return [(int(e["eventNumber"]), "/".join(e["focus"]["reference"].split("/")[-2:]))
            for b in of_kind("event-notification")(bundles) for e in status_of(b).get("notificationEvent", [])]


def subscribed(hospital: Hospital, receiver: Receiver, path: str, topic: str, **options: Any) -> str:
    """A subscription made active by its handshake."""
    answer = hospital.subscribe(hospital.ehr, topic, receiver.url(path), **options)
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "requested"
    subscription_id = str(answer.json()["id"])
    (handshake,) = receiver.wait(path, lambda found: len(of_kind("handshake")(found)) == 1)
    assert status_of(handshake)["subscription"]["reference"].endswith(f"/Subscription/{subscription_id}")
    deadline = time.monotonic() + 10
    while hospital.http.get(f"/fhir/Subscription/{subscription_id}", headers=hospital.ehr).json()["status"] != "active":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return subscription_id


# The tests ----------------------------------------------------------------------------------------------------


def test_a_shared_sheet_a_message_and_a_task_each_notify_with_their_number_and_focus(hospital: Hospital,
                                                                                     receiver: Receiver) -> None:
    sheets = subscribed(hospital, receiver, "/sheets", "urn:renkei:topic:sheet-shared",
                        headers=["Authorization: Bearer receiver-secret"])
    messages = subscribed(hospital, receiver, "/messages", "urn:renkei:topic:message-posted")
    subscribed(hospital, receiver, "/tasks", "urn:renkei:topic:task-changed", patient_id=hospital.pid)
    draft = created_id(create(hospital.http, hospital.doctor, response(hospital.pid, status="in-progress")))
    sheet = created_id(create(hospital.http, hospital.doctor, response(hospital.pid)))  # shared: asks for Tasks
    message = hospital.message("退院日が決まりました")

    found = focus_numbers(receiver.wait("/sheets", lambda b: len(focus_numbers(b)) >= 1))
    assert [focus for _, focus in found] == [f"QuestionnaireResponse/{sheet}"]  # never the draft
    assert draft not in str(receiver.bundles("/sheets"))
    (_, bundle, headers), = [r for r in receiver.received["/sheets"] if status_of(r[1])["type"] != "handshake"]
    assert headers["Authorization"] == "Bearer receiver-secret"
    assert headers["Content-Type"] == "application/fhir+json"
    Bundle.model_validate(bundle)  # a valid R4B Bundle
    assert bundle["type"] == "history" and len(bundle["entry"]) == 1  # id-only: the focus reference alone
    assert status_of(bundle)["eventsSinceSubscriptionStart"] == "1"

    posted = focus_numbers(receiver.wait("/messages", lambda b: len(focus_numbers(b)) >= 1))
    assert [focus for _, focus in posted] == [f"Communication/{message}"]
    assert posted[0][0] > found[0][0]  # event numbers are the log's order
    tasks = focus_numbers(receiver.wait("/tasks", lambda b: len(focus_numbers(b)) >= 1))
    assert all(focus.startswith("Task/") for _, focus in tasks)  # the sheet's acknowledgement Tasks
    task_id = tasks[0][1].split("/")[1]
    asked = hospital.http.get(f"/fhir/Task/{task_id}", headers=hospital.doctor).json()
    changed = hospital.http.put(f"/fhir/Task/{task_id}", json={**asked, "status": "cancelled"},
                                headers={**hospital.doctor, **FHIR_JSON})
    assert changed.status_code == 200, changed.text
    again = focus_numbers(receiver.wait("/tasks", lambda b: len(focus_numbers(b)) > len(tasks)))
    assert again[-1][1] == f"Task/{task_id}" and again[-1][0] > max(number for number, _ in tasks)

    status = hospital.http.get(f"/fhir/Subscription/{messages}/$status", headers=hospital.ehr)
    assert status.status_code == 200, status.text
    (entry,) = status.json()["entry"]
    assert entry["resource"]["type"] == "query-status" and entry["resource"]["status"] == "active"
    assert entry["resource"]["eventsSinceSubscriptionStart"] == "1"
    assert entry["resource"]["topic"] == "urn:renkei:topic:message-posted"

    replay = hospital.http.get(f"/fhir/Subscription/{sheets}/$events", headers=hospital.ehr,
                               params={"eventsSinceNumber": found[0][0], "content": "full-resource"})
    assert replay.status_code == 200, replay.text
    replayed = replay.json()
    assert status_of(replayed)["type"] == "query-event"
    assert [int(e["eventNumber"]) for e in status_of(replayed)["notificationEvent"]] == [found[0][0]]
    assert replayed["entry"][1]["resource"]["id"] == sheet
    empty = hospital.http.get(f"/fhir/Subscription/{sheets}/$events", headers=hospital.ehr,
                              params={"eventsUntilNumber": found[0][0] - 1}).json()
    assert "notificationEvent" not in status_of(empty)


def test_full_resource_notifications_carry_the_resource_as_the_owner_may_see_it(hospital: Hospital,
                                                                               receiver: Receiver) -> None:
    subscribed(hospital, receiver, "/full", "urn:renkei:topic:message-posted", content="full-resource")
    message = hospital.message("明日の訪問は午後になります")
    (bundle,) = of_kind("event-notification")(receiver.wait("/full", lambda b: len(focus_numbers(b)) >= 1))
    Bundle.model_validate(bundle)
    assert [e["resource"]["id"] for e in bundle["entry"][1:]] == [message]
    assert bundle["entry"][1]["resource"]["payload"][0]["contentString"] == "明日の訪問は午後になります"
    assert bundle["entry"][1]["request"] == {"method": "POST", "url": "Communication"}
    assert bundle["entry"][1]["fullUrl"] == status_of(bundle)["notificationEvent"][0]["focus"]["reference"]
    audited = hospital.http.get("/fhir/AuditEvent", params={"patient": hospital.pid},
                                headers=hospital.network.bearer("admin")).json()
    assert "subscription-notification" in {e["resource"]["subtype"][0]["code"] for e in audited["entry"]}
    # A client whose scopes do not reach the topic's resources cannot ask for them in full.
    refused = hospital.subscribe(hospital.narrow, "urn:renkei:topic:message-posted", receiver.url("/x"),
                                 content="full-resource")
    assert refused.status_code == 422 and refused.json()["resourceType"] == "OperationOutcome"


def test_a_failing_endpoint_is_retried_with_backoff_and_loses_nothing(hospital: Hospital, receiver: Receiver) -> None:
    subscribed(hospital, receiver, "/flaky", "urn:renkei:topic:message-posted")
    receiver.failing["/flaky"] = 2
    first = hospital.message("一通目")
    receiver.wait("/flaky", lambda b: len(focus_numbers(b)) >= 3)  # two refused, the third taken
    second = hospital.message("二通目")
    found = focus_numbers(receiver.wait("/flaky", lambda b: len({f for _, f in focus_numbers(b)}) >= 2))
    attempts = [at for at, bundle, _ in receiver.received["/flaky"] if status_of(bundle)["type"] != "handshake"]
    assert attempts[1] - attempts[0] >= 0.25 and attempts[2] - attempts[1] >= 0.5  # 0.3 s, then 0.6 s
    assert [f for _, f in found] == [f"Communication/{first}"] * 3 + [f"Communication/{second}"]
    assert len({number for number, _ in found}) == 2  # the same number each time: the receiver drops repeats


def test_an_endpoint_that_keeps_failing_goes_to_error(hospital: Hospital, receiver: Receiver) -> None:
    receiver.failing["/down"] = -1
    answer = hospital.subscribe(hospital.ehr, "urn:renkei:topic:task-changed", receiver.url("/down"))
    subscription_id = created_id(answer)
    receiver.wait("/down", lambda b: len(b) >= 3)
    deadline = time.monotonic() + 10
    while (found := hospital.http.get(f"/fhir/Subscription/{subscription_id}", headers=hospital.ehr).json()
           )["status"] != "error":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "3 times" in found["error"]
    time.sleep(0.5)
    assert len(receiver.bundles("/down")) == 3  # no more attempts


def test_a_client_never_hears_of_a_patient_it_may_not_read(hospital: Hospital, receiver: Receiver) -> None:
    subscribed(hospital, receiver, "/in-team", "urn:renkei:topic:message-posted")
    answer = hospital.subscribe(hospital.outsider, "urn:renkei:topic:message-posted", receiver.url("/outside"))
    outside = created_id(answer)
    receiver.wait("/outside", lambda b: len(of_kind("handshake")(b)) == 1)
    first = hospital.message("チーム内の連絡")
    receiver.wait("/in-team", lambda b: len(focus_numbers(b)) >= 1)
    # The hospital leaves the team: from then on it hears nothing more of the patient.
    (team,) = [e["resource"] for e in hospital.http.get("/fhir/CareTeam", params={"patient": hospital.pid},
                                                        headers=hospital.doctor).json()["entry"]]
    team["participant"] = [p for p in team["participant"] if "Organization/" not in p["member"]["reference"]]
    assert hospital.http.put(f"/fhir/CareTeam/{team['id']}", json=team,
                             headers={**hospital.doctor, **FHIR_JSON}).status_code == 200
    second = hospital.message("退院後の連絡")
    time.sleep(1.0)
    assert [f for _, f in focus_numbers(receiver.bundles("/in-team"))] == [f"Communication/{first}"]
    assert focus_numbers(receiver.bundles("/outside")) == []
    assert second not in str(receiver.bundles("/outside"))
    # Nor is another client's Subscription anyone else's to see.
    for path in (f"/fhir/Subscription/{outside}", f"/fhir/Subscription/{outside}/$status"):
        assert hospital.http.get(path, headers=hospital.ehr).status_code == 404
    assert hospital.http.get(f"/fhir/Subscription/{outside}", headers=hospital.doctor).status_code == 404
    assert hospital.http.get(f"/fhir/Subscription/{outside}", headers=hospital.network.bearer("admin")
                             ).status_code == 200
    assert [e["resource"]["id"] for e in hospital.http.get("/fhir/Subscription", headers=hospital.outsider
                                                           ).json()["entry"]] == [outside]
    assert hospital.http.delete(f"/fhir/Subscription/{outside}", headers=hospital.ehr).status_code == 404
    assert hospital.http.delete(f"/fhir/Subscription/{outside}", headers=hospital.outsider).status_code == 204
    assert hospital.http.get(f"/fhir/Subscription/{outside}", headers=hospital.outsider).status_code == 404


@pytest.mark.parametrize("change", [
    {"criteria": "urn:renkei:topic:no-such-topic"},
    {"channel": {"type": "websocket", "payload": "application/fhir+json"}},
    {"channel": {"type": "rest-hook", "payload": "application/fhir+json"}},
    {"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "payload": "text/plain"}},
    {"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "payload": "application/fhir+json",
                 "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "everything"}]}}},
    {"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "payload": "application/fhir+json",
                 "header": ["Host: evil.example"]}},
    {"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "payload": "application/fhir+json",
                 "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 10**9}]}},
    {"_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": "code=1234"}]}},
    {"channel": {"type": "rest-hook", "endpoint": "ftp://example.org/x", "payload": "application/fhir+json"}},
    {"channel": {"type": "rest-hook", "endpoint": "https://10.0.0.1/x", "payload": "application/fhir+json"}},
    {"channel": "not an object"},
    {"status": "no-such-status"},
])
def test_bad_subscriptions_are_refused_with_an_operation_outcome(hook_server: LiveServer, change: Json) -> None:
    network = open_network(hook_server)
    body = {**subscription("urn:renkei:topic:message-posted", "http://127.0.0.1:9/x"), **change}
    answer = hook_server.client().post("/fhir/Subscription", json=body,
                                       headers={**network.bearer("care_manager"), **FHIR_JSON})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_generic_interactions_refuse_subscriptions(hospital: Hospital) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": subscription("urn:renkei:topic:message-posted", "http://127.0.0.1:9/x"),
         "request": {"method": "POST", "url": "Subscription"}}]}
    answer = hospital.http.post("/fhir", json=bundle, headers={**hospital.ehr, **FHIR_JSON})
    assert answer.status_code == 200 and answer.json()["entry"][0]["response"]["status"].startswith("405")
    assert hospital.http.get("/fhir/Subscription/abc/_history", headers=hospital.ehr).status_code == 405
    changed = subscription("urn:renkei:topic:message-posted", "http://127.0.0.1:9/x")
    assert hospital.http.put("/fhir/Subscription/abc", json={**changed, "id": "abc"},
                             headers={**hospital.ehr, **FHIR_JSON}).status_code == 405


def test_a_private_or_loopback_endpoint_is_refused_unless_loopback_is_allowed() -> None:
    for url in ("http://127.0.0.1:8080/hook", "https://localhost/hook", "https://192.168.1.10/hook",
                "https://169.254.169.254/latest"):
        with pytest.raises(BadRequest) as refused:
            checked_endpoint(url, allow_loopback=False)
        assert refused.value.code == "endpoint_refused"
    assert checked_endpoint("http://127.0.0.1:8080/hook", allow_loopback=True)


def test_an_idle_subscription_sends_heartbeats_at_its_period(hospital: Hospital, receiver: Receiver) -> None:
    subscribed(hospital, receiver, "/idle", "urn:renkei:topic:task-changed", heartbeat=1,
               patient_id="no-such-patient")
    beats = of_kind("heartbeat")(receiver.wait("/idle", lambda b: len(of_kind("heartbeat")(b)) >= 2, timeout=10))
    assert status_of(beats[0])["status"] == "active" and status_of(beats[0])["eventsSinceSubscriptionStart"] == "0"
    times = [at for at, bundle, _ in receiver.received["/idle"] if status_of(bundle)["type"] == "heartbeat"]
    assert times[1] - times[0] >= 0.9
