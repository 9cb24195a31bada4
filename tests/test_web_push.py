"""Web Push end to end, on SQLite and PostgreSQL: browsers (a real P-256 key pair and auth secret each) register over
HTTP, an urgent message is posted, and a real push service on 127.0.0.1 receives the request, decrypts the RFC 8291
payload with the browser's keys (it must be the wake-up and nothing about the patient) and verifies the RFC 8292
VAPID signature with the key the server publishes. Also: an open app (WebSocket) is not pushed to, a routine
message pushes nothing, a 410 removes the device, a failure is counted, and bad registrations are refused."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.share.push import devices
from services.share.push.webpush import WAKE_MESSAGE
from tests.conftest import _migrated as migrated
from tests.infra import LiveServer, PostgresDatabases, free_port, settings_for_tests
from tests.test_messages import Thread
from tests.test_push_socket import subscribed

Json = dict[str, Any]
WAIT_SECONDS = 10.0


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class PushService:
    """A push service on 127.0.0.1 that records every request; a path under /gone/ answers 410, /broken/ 500."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 410 if self.path.startswith("/gone/") else 500 if self.path.startswith("/broken/") else 201
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with service.arrived:
                    service.requests.append((self.path, dict(self.headers.items()), body))
                    service.arrived.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            return [(headers, body) for found, headers, body in self.requests if found == path]

    def wait_for(self, path: str, timeout: float = WAIT_SECONDS) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not any(found == path for found, _, _ in self.requests):
                left = deadline - time.monotonic()
                assert left > 0, f"no push arrived at {path}"
                self.arrived.wait(left)
        return self.to(path)[0]


class Browser:
    """What PushManager.subscribe makes: a P-256 key pair and a 16-byte auth secret, for one endpoint."""

    def __init__(self, service: PushService, kind: str = "push") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.secret = os.urandom(16)
        self.path = f"/{kind}/{uuid.uuid4().hex}"
        self.endpoint = service.origin + self.path
        point = self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
        self.subscription: Json = {"endpoint": self.endpoint, "expirationTime": None,
                                   "keys": {"p256dh": b64url(point), "auth": b64url(self.secret)}}

    def register(self, http: httpx.Client, who: dict[str, str]) -> None:
        answer = http.post("/push/devices", json=self.subscription, headers=who)
        assert answer.status_code == 201, answer.text

    def decrypt(self, body: bytes) -> bytes:
        plain: bytes = http_ece.decrypt(body, private_key=self.key, auth_secret=self.secret, version="aes128gcm")
        return plain


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def push_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server that may call loopback endpoints (the push service below)."""
    port = free_port()
    overrides: dict[str, Any] = {"outbound_allow_loopback": True}
    if request.param == "postgresql":
        databases: PostgresDatabases = request.getfixturevalue("pg_databases")
        overrides |= {"auth_database_url": databases.create("auth"), "share_database_url": databases.create("share")}
    settings = settings_for_tests(str(tmp_path_factory.mktemp(f"webpush-{request.param}")), port, **overrides)
    migrated(settings.resolved_auth_database_url, "auth")
    migrated(settings.resolved_share_database_url, "share")
    live = LiveServer(settings, port).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def service() -> Iterator[PushService]:
    found = PushService()
    yield found
    found.http.shutdown()


def urgent(thread: Thread, text: str) -> str:
    answer = thread.post(thread.doctor, thread.message(text, category="urgent", priority="urgent"))
    assert answer.status_code == 201, answer.text
    found: str = answer.json()["id"]
    return found


def vapid_key(thread: Thread) -> str:
    answer = thread.http.get("/push/vapid-public-key", headers=thread.nurse)
    assert answer.status_code == 200, answer.text
    found: str = answer.json()["public_key"]
    return found


def device_row(server: LiveServer, endpoint: str) -> Any:
    engine = create_engine(server.settings.resolved_share_database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT failures, last_success FROM web_push_devices WHERE endpoint = :e"),
                                      {"e": endpoint}).first()
    finally:
        engine.dispose()


def test_an_urgent_message_wakes_the_team_with_an_encrypted_signed_wake_up(push_server: LiveServer,
                                                                              service: PushService) -> None:
    thread = Thread(push_server)
    nurse, manager, author = Browser(service), Browser(service), Browser(service)
    nurse.register(thread.http, thread.nurse)
    manager.register(thread.http, thread.manager)
    author.register(thread.http, thread.doctor)
    public_key = vapid_key(thread)
    text_sent = "SpO2 85%、至急往診をお願いします"
    message_id = urgent(thread, text_sent)

    headers, body = service.wait_for(nurse.path)
    plain = nurse.decrypt(body)
    wake = orjson.loads(plain)
    assert set(wake) == {"type", "message", "seq"} and isinstance(wake["seq"], int)
    assert wake["type"] == "wake" and wake["message"] == WAKE_MESSAGE
    for secret in (thread.pid, message_id, text_sent, "SpO2"):
        assert secret.encode() not in plain and secret.encode() not in body
    assert headers["Content-Encoding"] == "aes128gcm" and headers["Urgency"] == "high"
    assert int(headers["TTL"]) > 0

    scheme, _, parameters = headers["Authorization"].partition(" ")
    values = dict(part.split("=", 1) for part in parameters.split(","))
    assert scheme == "vapid" and values["k"] == public_key
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(public_key))
    claims = jwt.decode(values["t"], point, algorithms=["ES256"], audience=service.origin)
    assert 0 < claims["exp"] - time.time() <= 24 * 3600 and claims["sub"].startswith("mailto:")

    _, manager_body = service.wait_for(manager.path)
    assert orjson.loads(manager.decrypt(manager_body)) == wake
    time.sleep(1.5)  # whatever else would come has come
    assert len(service.to(nurse.path)) == 1 and len(service.to(manager.path)) == 1
    assert service.to(author.path) == []  # who wrote it needs no reminder
    assert device_row(push_server, nurse.endpoint).last_success is not None


def test_a_member_whose_app_is_open_is_not_pushed(push_server: LiveServer, service: PushService) -> None:
    thread = Thread(push_server)
    nurse, manager = Browser(service), Browser(service)
    nurse.register(thread.http, thread.nurse)
    manager.register(thread.http, thread.manager)
    socket = subscribed(push_server, thread.nurse["Authorization"].removeprefix("Bearer "))
    try:
        urgent(thread, "転倒あり、至急")
        service.wait_for(manager.path)
        time.sleep(1.5)
        assert service.to(nurse.path) == []
    finally:
        socket.close()


def test_a_routine_message_pushes_nothing(push_server: LiveServer, service: PushService) -> None:
    thread = Thread(push_server)
    nurse = Browser(service)
    nurse.register(thread.http, thread.nurse)
    answer = thread.post(thread.doctor, thread.message("定期連絡：変わりありません"))
    assert answer.status_code == 201, answer.text
    time.sleep(2.0)
    assert service.to(nurse.path) == []
    urgent(thread, "至急")  # and the pipeline was working all along
    service.wait_for(nurse.path)
    time.sleep(1.0)
    assert len(service.to(nurse.path)) == 1


def test_a_gone_subscription_is_removed_and_a_failing_one_counted(push_server: LiveServer,
                                                                   service: PushService) -> None:
    thread = Thread(push_server)
    gone, broken = Browser(service, "gone"), Browser(service, "broken")
    gone.register(thread.http, thread.nurse)
    broken.register(thread.http, thread.manager)
    urgent(thread, "至急")
    service.wait_for(gone.path)
    service.wait_for(broken.path)
    deadline = time.monotonic() + WAIT_SECONDS
    while device_row(push_server, gone.endpoint) is not None or device_row(push_server, broken.endpoint)[0] == 0:
        assert time.monotonic() < deadline, "the outcomes were not recorded"
        time.sleep(0.1)
    assert device_row(push_server, broken.endpoint)[0] == 1
    removed = thread.http.delete("/push/devices", params={"endpoint": gone.endpoint}, headers=thread.nurse)
    assert removed.status_code == 404


def test_a_device_is_removed_by_its_owner_only(push_server: LiveServer, service: PushService) -> None:
    thread = Thread(push_server)
    nurse = Browser(service)
    nurse.register(thread.http, thread.nurse)
    nurse.register(thread.http, thread.nurse)  # registering again is an update, not a second device
    params = {"endpoint": nurse.endpoint}
    assert thread.http.delete("/push/devices", params=params, headers=thread.manager).status_code == 404
    assert thread.http.delete("/push/devices", params=params, headers=thread.nurse).status_code == 204
    assert device_row(push_server, nurse.endpoint) is None
    assert thread.http.get("/push/vapid-public-key").status_code == 401


@pytest.mark.parametrize("endpoint", ["https://10.0.0.1/push/abc", "http://example.org/push/abc",
                                      "https://169.254.169.254/latest", "ftp://127.0.0.1/x", "not a url"])
def test_an_endpoint_the_server_must_not_call_is_refused(push_server: LiveServer, service: PushService,
                                                         endpoint: str) -> None:
    thread = Thread(push_server)
    subscription = {**Browser(service).subscription, "endpoint": endpoint}
    answer = thread.http.post("/push/devices", json=subscription, headers=thread.nurse)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "endpoint_refused"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("p256dh", b64url(b"\x04" + b"\x07" * 63), "65-byte"),  # fixed values: xdist workers must agree on test ids
    ("p256dh", b64url(b"\x04" + b"\x01" * 64), "not a point"),
    ("auth", b64url(b"\x05" * 15), "16 bytes"),
    ("auth", "not*base64", "not base64url"),
], ids=["p256dh-64-bytes", "p256dh-off-curve", "auth-15-bytes", "auth-not-base64url"])
def test_keys_that_are_not_a_browsers_are_refused(push_server: LiveServer, service: PushService, field: str,
                                                  value: str, says: str) -> None:
    thread = Thread(push_server)
    subscription = Browser(service).subscription
    subscription["keys"][field] = value
    answer = thread.http.post("/push/devices", json=subscription, headers=thread.nurse)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_subscription" and says in answer.json()["error_description"]


def test_each_event_and_device_is_claimed_by_one_instance_only(push_server: LiveServer) -> None:
    engine = create_engine(push_server.settings.resolved_share_database_url)
    target = devices.Target(uuid.uuid4().hex, "https://push.example/x", "k", "a")
    try:
        with Session(engine) as first, Session(engine) as second:
            assert devices.claim(first, 10**12, [target]) == [target]
            first.commit()
            assert devices.claim(second, 10**12, [target]) == []
            second.commit()
    finally:
        engine.dispose()
