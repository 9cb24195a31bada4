"""The security index: one automated test per OWASP ASVS 5.0 level-2 requirement the "production" issue names,
each against the live server on SQLite and PostgreSQL, each standing alone (other files prove parts of these in
more depth: tests/test_access_matrix.py, tests/test_access_rules.py, tests/test_push_socket.py,
tests/test_metrics.py, tests/test_limits.py; this file exercises every item end to end anyway).

| ASVS 5.0 | test |
| --- | --- |
| V8.2.2 object-level authorisation (BOLA/IDOR), every route with an id, and /ws | test_asvs_8_2_2_* |
| V8.2.3 field-level authorisation (BOPLA): withheld sheet sections | test_asvs_8_2_3_* |
| V8.4.1 cross-tenant isolation: another network sees nothing | test_asvs_8_4_1_* |
| V4.4.2 WebSocket Origin checked at the handshake | test_asvs_4_4_2_* |
| V14.2.1 no token in any URL | test_asvs_14_2_1_* |
| V14.3.2 Cache-Control: no-store on patient data | test_asvs_14_3_2_* |
| V16.3.1 / V16.3.2 authentication and authorisation outcomes logged | test_asvs_16_3_1_* |
| V16.4.1 no log injection | test_asvs_16_4_1_* |
| V16.5.1 generic error messages | test_asvs_16_5_1_* |
| V16.2.5 / V14.2.4 no patient data, token or password in the logs (planted strings) | test_asvs_16_2_5_* |
"""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from services.share.push import protocol
from tests.fhir_helpers import FHIR_JSON, create, created_id, example, observation, patient, response
from tests.infra import PASSWORD, LiveServer, Network
from tests.test_access_rules import add_to_team, care_worker_on_team, consent, open_network
from tests.test_admin import public_jwk
from tests.test_push_socket import close_sockets, events_until, opened, quiet, receive, subscribed, token_of
from tests.test_subscriptions import hook_server

# Fixtures used here by name: the sockets a test opened are closed when it ends (autouse); a server whose
# Subscriptions may name a loopback endpoint.
__all__ = ["close_sockets", "hook_server"]

ROOT = Path(__file__).resolve().parents[2]
CATEGORY = "urn:renkei:codesystem:message-category"
Json = dict[str, Any]


def message(pid: str, text: str) -> Json:
    return {"resourceType": "Communication", "status": "completed",
            "category": [{"coding": [{"system": CATEGORY, "code": "daily-update"}]}],
            "subject": {"reference": f"Patient/{pid}"}, "sent": "2026-12-04T09:00:00+09:00",
            "payload": [{"contentString": text}]}


@dataclass
class World:
    """Network A: a patient with every kind of thing a route can name, written by its physician (the team);
    A's nurse is in the network but not on the team. Network B: a physician and an administrator of their own."""

    server: LiveServer
    home: Network
    away: Network
    http: httpx.Client
    owner: dict[str, str]
    pid: str
    ids: dict[str, str] = field(default_factory=dict)
    callers: dict[str, dict[str, str]] = field(default_factory=dict)


def build_world(server: LiveServer) -> World:
    home, away = open_network(server), open_network(server)
    http = server.client()
    owner = home.bearer("physician")
    pid = created_id(create(http, owner, patient()))
    world = World(server, home, away, http, owner, pid)
    ids = world.ids
    ids["Patient"] = pid
    ids["Consent"] = created_id(create(http, owner, consent(pid)))
    sheet = created_id(create(http, owner, example("DischargeSheet", pid)))
    ids["QuestionnaireResponse"] = sheet
    ids["emergency"] = created_id(create(http, owner, example("EmergencySheet", pid)))
    ids["Observation"] = created_id(create(http, owner, observation(pid)))
    ids["Communication"] = created_id(create(http, owner, message(pid, "訪問しました")))
    ids["Task"] = created_id(create(http, owner, {"resourceType": "Task", "status": "requested", "intent": "order",
                                                  "for": {"reference": f"Patient/{pid}"}}))
    document = http.get(f"/fhir/QuestionnaireResponse/{sheet}/$document", headers=owner).json()
    ids["Bundle"] = created_id(create(http, owner, {k: v for k, v in document.items() if k not in ("id", "meta")}))
    (team,) = http.get("/fhir/CareTeam", params={"patient": pid}, headers=owner).json()["entry"]
    ids["CareTeam"] = team["resource"]["id"]
    subscribed_to = http.post("/fhir/Subscription", headers={**owner, **FHIR_JSON}, json={
        "resourceType": "Subscription", "status": "requested", "reason": "退院連携",
        "criteria": "urn:renkei:topic:message-posted",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/renkei",
                    "payload": "application/fhir+json"}})
    ids["Subscription"] = created_id(subscribed_to)
    admin = home.bearer("admin")
    audit = http.get("/fhir/AuditEvent", params={"patient": pid}, headers=admin).json()
    ids["AuditEvent"] = audit["entry"][0]["resource"]["id"]
    device = http.post("/auth/devices", json={"name": "訪問用タブレット"}, headers=owner)
    assert device.status_code == 201, device.text
    ids["device"] = device.json()["id"]
    ids["user"] = home.user("physician")["id"]
    ids["invitee"] = home.user("clerk")["id"]
    client_id = f"ehr-{uuid.uuid4().hex[:12]}"
    client = http.put(f"/auth/admin/clients/{client_id}", headers=admin, json={
        "client_id": client_id, "organization": home.orgs["hospital"], "scope": "system/Patient.rs",
        "jwks": {"keys": [public_jwk()]}})
    assert client.status_code in (200, 201), client.text
    ids["client"] = client_id
    world.callers = {"foreign": away.bearer("physician"), "outsider": home.bearer("nurse"),
                     "foreign-admin": away.bearer("admin")}
    return world


# Routes that take an id, and what each is given. Every such route of the OpenAPI description must be here or in
# PUBLIC_BY_DESIGN: a new route fails the test below until someone says how it is protected.
OPERATIONS: dict[str, str] = {
    "/fhir/Patient/{patient_id}/$break-glass": "Patient", "/fhir/Patient/{patient_id}/$access-report": "Patient",
    "/fhir/Patient/{patient_id}/$emergency-summary": "Patient", "/fhir/Patient/{patient_id}/$crew-report": "Patient",
    "/fhir/CareTeam/{team_id}/$invitations": "CareTeam", "/fhir/CareTeam/{team_id}/$accept": "CareTeam",
    "/fhir/CareTeam/{team_id}/$approve": "CareTeam",
    "/fhir/QuestionnaireResponse/{sheet_id}/$document": "QuestionnaireResponse",
    "/fhir/QuestionnaireResponse/{sheet_id}/$diff": "QuestionnaireResponse",
    "/fhir/Task/{task_id}/$acknowledge": "Task", "/fhir/Bundle/{bundle_id}/$discharge-draft": "Bundle",
    "/fhir/Communication/{message_id}/$read": "Communication",
    "/fhir/Communication/{message_id}/$read-status": "Communication",
    "/fhir/Subscription/{subscription_id}": "Subscription", "/fhir/Subscription/{subscription_id}/$status":
    "Subscription", "/fhir/Subscription/{subscription_id}/$events": "Subscription",
    "/fhir/AuditEvent/{event_id}": "AuditEvent",
}
GENERIC = ["/fhir/{resource_type}/{resource_id}", "/fhir/{resource_type}/{resource_id}/_history",
           "/fhir/{resource_type}/{resource_id}/_history/{version}"]
GENERIC_TYPES = ["Patient", "QuestionnaireResponse", "Observation", "Communication", "Task", "CareTeam", "Consent",
                 "Bundle"]
IDENTITY = {"/auth/devices/{device_id}": "device", "/auth/admin/users/{user_id}": "user",
            "/auth/admin/users/{user_id}/reset-mfa": "user", "/auth/admin/users/{user_id}/devices": "user",
            "/auth/admin/users/{user_id}/devices/{device_id}": "user", "/auth/admin/clients/{client_id}": "client"}
PUBLIC_BY_DESIGN = {
    "/auth/networks/{network_id}/joint-use": "the joint-use notice is published (APPI), no login",
    "/auth/networks/{network_id}/policy": "a network's sharing policy, read by the share service without a login",
    "/fhir/{resource_type}": "type-level: no id (searches are tested under V8.4.1)",
    "/fhir/{resource_type}/_search": "type-level: no id", "/fhir/{resource_type}/_history": "type-level: no id",
}


def operation_body(world: World, path: str) -> Json:
    """A well-formed body for an operation, so that what answers is the access decision, not the body's check."""
    parameters: list[Json] = {
        "$break-glass": [{"name": "reason", "valueString": "心肺停止で搬送中"}],
        "$approve": [{"name": "approval", "valueCode": "patient"},
                     {"name": "member", "valueReference": {"reference": f"Practitioner/{world.ids['invitee']}"}}],
        "$acknowledge": [{"name": "question", "valueString": "退院日の確認です"}],
        "$crew-report": [{"name": "report", "resource": {
            "resourceType": "QuestionnaireResponse", "status": "completed",
            "item": [item for item in example("EmergencySheet", world.pid, "dementia-fall-dnar")["item"]
                     if item["linkId"] in ("emergency.call", "emergency.crew")]}}],
    }.get(path.rsplit("/", 1)[1], [])
    return {"resourceType": "Parameters", **({"parameter": parameters} if parameters else {})}


def requests_for(world: World, path: str, method: str) -> list[tuple[str, str, Json | None]]:
    """(method, url, body) for one route and method, naming network A's things."""
    ids = world.ids
    parameters = {"version": "1", "device_id": ids["device"]}
    body: Json | None = None
    if method in ("post", "put", "patch"):
        body = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "心肺停止で搬送中"}]}
    if path in OPERATIONS:
        body = operation_body(world, path) if body is not None else None
        kind = OPERATIONS[path]
        url = re.sub(r"\{[a-z_]+_id\}", ids[kind], path)
        if path.endswith("$diff"):
            url += "?from=1&to=1"
        return [(method, url, body)]
    if path in GENERIC:
        found = []
        for kind in GENERIC_TYPES:
            url = path.replace("{resource_type}", kind).replace("{resource_id}", ids[kind])
            url = url.replace("{version}", "1")
            if method == "put":  # the owner's own current version: a body the owner would have had accepted
                body = world.http.get(f"/fhir/{kind}/{ids[kind]}", headers=world.owner).json()
            found.append((method, url, body))
        return found
    if path in IDENTITY:
        value = ids[IDENTITY[path]]
        url = re.sub(r"\{(user|client)_id\}", value, path)
        url = url.replace("{device_id}", parameters["device_id"])
        if path.endswith("/clients/{client_id}") and method == "put":
            body = {"client_id": value, "organization": world.away.orgs["hospital"], "scope": "system/Patient.rs",
                    "jwks": {"keys": [public_jwk()]}}
        elif method == "patch":
            body = {"name": "乗っ取り"}
        return [(method, url, body)]
    raise AssertionError(f"{method.upper()} {path} takes an id but is not in this test's table: say how it is "
                         "protected (add it to OPERATIONS, IDENTITY or PUBLIC_BY_DESIGN)")


def test_asvs_8_2_2_object_level_authorisation_on_every_route_with_an_id(hook_server: LiveServer) -> None:
    """ASVS 5.0 V8.2.2 (data-specific access, BOLA/IDOR): every route of the OpenAPI description that takes an id,
    asked about network A's patient's things by a physician of network B (cross-network) and by a nurse of A who
    is not on the patient's team, answers 403 or 404 — never the thing, never a change. The administration routes
    are asked by B's administrator (another tenant's admin) and by A's non-admin nurse. The owner's own reads
    succeed (so a 404 is a refusal, not a broken URL), and nothing the outsiders sent changed anything. (The server
    is tests/test_subscriptions.py's, which lets a Subscription name a loopback endpoint.)"""
    server = hook_server
    world = build_world(server)
    spec = server.app.openapi()
    asked = 0
    before = {kind: world.http.get(f"/fhir/{kind}/{world.ids[kind]}", headers=world.owner).json()
              for kind in GENERIC_TYPES}
    for path, methods in spec["paths"].items():
        if "{" not in path or path in PUBLIC_BY_DESIGN:
            continue
        for method in methods:
            for verb, url, body in requests_for(world, path, method):
                callers = ["foreign-admin", "outsider"] if path.startswith("/auth/") else ["foreign", "outsider"]
                for who in callers:
                    headers = {**world.callers[who], **(FHIR_JSON if body is not None else {})}
                    answer = world.http.request(verb.upper(), url, headers=headers,
                                                content=json.dumps(body).encode() if body is not None else None)
                    asked += 1
                    allowed = {403, 404}
                    if path == "/auth/admin/clients/{client_id}" and verb == "put":
                        # Client ids are one namespace (each is the issuer of its hospital's assertions): taking
                        # another network's is refused as a conflict, which changes nothing (checked below).
                        allowed.add(409)
                    assert answer.status_code in allowed, (who, verb, url, answer.status_code, answer.text[:300])
                    assert world.home.id not in answer.text, answer.text[:300]
                    assert "山田" not in answer.text and "ヤマダ" not in answer.text, answer.text[:300]
                if verb == "get" and path.startswith("/fhir") and "AuditEvent" not in path and \
                        "access-report" not in path:
                    owned = world.http.get(url, headers=world.owner)
                    assert owned.status_code == 200, (url, owned.status_code, owned.text[:200])
    after = {kind: world.http.get(f"/fhir/{kind}/{world.ids[kind]}", headers=world.owner).json()
             for kind in GENERIC_TYPES}
    assert after == before  # no update, delete, acknowledgement or read mark of an outsider took effect
    home_admin = world.home.bearer("admin")
    assert world.http.get(f"/auth/admin/users/{world.ids['user']}", headers=home_admin).json()["name"] != "乗っ取り"
    clients = {c["client_id"]: c for c in world.http.get("/auth/admin/clients", headers=home_admin).json()}
    assert clients[world.ids["client"]]["organization"] == world.home.orgs["hospital"]
    devices = world.http.get("/auth/devices", headers=world.owner).json()
    assert world.ids["device"] in json.dumps(devices)
    assert asked > 80, asked


def test_asvs_8_2_2_websocket_delivers_no_event_of_a_patient_one_may_not_see(server: LiveServer) -> None:
    """ASVS 5.0 V8.2.2 over /ws: a physician of another network and a nurse of the same network outside the
    patient's team, both subscribed, are sent no event of the patient's writes; a team member is sent each."""
    home, away = open_network(server), open_network(server)
    http, owner = server.client(), home.bearer("physician")
    pid = created_id(create(http, owner, patient()))
    created_id(create(http, owner, consent(pid)))
    add_to_team(http, owner, pid, f"Practitioner/{home.user('care_manager')['id']}", role="care-manager")
    member = subscribed(server, token_of(home, "care_manager"))
    foreign = subscribed(server, token_of(away, "physician"))
    outsider = subscribed(server, token_of(home, "nurse"))
    written = [created_id(create(http, owner, observation(pid))),
               created_id(create(http, owner, message(pid, "夕方に再訪問します")))]
    frames = events_until(member, {("Observation", written[0]), ("Communication", written[1])})
    assert all(f["patient"] == pid for f in frames)
    assert quiet(foreign, 1.0) == [] and quiet(outsider, 0.5) == []


def test_asvs_8_2_3_field_level_redaction_of_withheld_sheet_sections(server: LiveServer) -> None:
    """ASVS 5.0 V8.2.3 (field-level access, BOPLA): a care worker on the team reads a daily note whose vital-signs
    section is labelled "nursing" by its template: the section is replaced by the withheld marker, its values are
    nowhere in the answer (read, vread, search), the sheet is marked REDACTED; the physician sees it whole."""
    http, doctor, helper, pid = care_worker_on_team(server)
    note = {**response(pid), "questionnaire": "urn:renkei:questionnaire:DailyCareNote|1.0.0", "item": [
        {"linkId": "daily.visit", "text": "記録", "item": [
            {"linkId": "daily.visit.time", "text": "記録日時",
             "answer": [{"valueDateTime": "2026-11-20T10:00:00+09:00"}]}]},
        {"linkId": "daily.vitals", "text": "バイタルサイン",
         "item": [{"linkId": "daily.vitals.spo2", "text": "SpO2", "answer": [{"valueInteger": 87}]}]},
        {"linkId": "daily.intake", "text": "食事・水分",
         "item": [{"linkId": "daily.intake.notes", "text": "食事", "answer": [{"valueString": "全量摂取"}]}]}]}
    sheet = created_id(create(http, doctor, note))
    whole = http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=doctor).json()
    assert "87" in json.dumps(whole["item"])
    searched = http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=helper).json()
    seen = [http.get(f"/fhir/QuestionnaireResponse/{sheet}", headers=helper).json(),
            http.get(f"/fhir/QuestionnaireResponse/{sheet}/_history/1", headers=helper).json(),
            next(e["resource"] for e in searched["entry"] if e["resource"]["id"] == sheet)]
    for answer in seen:
        items = {item["linkId"]: item for item in answer["item"]}
        vitals = json.dumps(items["daily.vitals"])
        assert "urn:renkei:extension:withheld" in vitals and "answer" not in vitals and "87" not in vitals
        assert "valueInteger" not in json.dumps(answer["item"])
        assert "全量摂取" in json.dumps(items["daily.intake"], ensure_ascii=False)
        assert "REDACTED" in json.dumps(answer["meta"].get("security", []))


def test_asvs_8_4_1_cross_network_isolation(server: LiveServer) -> None:
    """ASVS 5.0 V8.4.1 (cross-tenant controls): a physician of network B searching for network A's patient by id,
    name, identifier, and for its sheets, observations and messages, finds nothing — not even in type-level
    history or with _include; A's ids read as 404, as an id that never existed does; and a B write naming A's
    patient is refused exactly as one naming no patient."""
    home, away = open_network(server), open_network(server)
    http, owner, stranger = server.client(), home.bearer("physician"), away.bearer("physician")
    identifier = uuid.uuid4().hex[:10]
    pid = created_id(create(http, owner, patient(family="境界", given="越", identifier=identifier)))
    sheet = created_id(create(http, owner, response(pid)))
    obs = created_id(create(http, owner, observation(pid)))
    searches = [("Patient", {"_id": pid}), ("Patient", {"family:exact": "境界"}),
                ("Patient", {"identifier": identifier}), ("QuestionnaireResponse", {"patient": pid}),
                ("QuestionnaireResponse", {"_id": sheet}), ("Observation", {"subject": f"Patient/{pid}"}),
                ("Patient", {"_id": pid, "_revinclude": "Observation:subject"}), ("CareTeam", {"patient": pid})]
    for kind, query in searches:
        answer = http.get(f"/fhir/{kind}", params=query, headers=stranger)
        assert answer.status_code == 200 and answer.json().get("entry", []) == [], (kind, query, answer.text[:200])
        posted = http.post(f"/fhir/{kind}/_search", data=query, headers=stranger)
        assert posted.status_code == 200 and posted.json().get("entry", []) == [], (kind, query)
    for kind in ("Patient", "QuestionnaireResponse", "Observation"):
        history = http.get(f"/fhir/{kind}/_history", headers=stranger).json()
        assert pid not in json.dumps(history) and sheet not in json.dumps(history)
    for url in (f"/fhir/Patient/{pid}", f"/fhir/QuestionnaireResponse/{sheet}", f"/fhir/Observation/{obs}",
                f"/fhir/Observation/{obs}/_history/1", f"/fhir/Patient/{pid}/_history"):
        foreign = http.get(url, headers=stranger)
        never = http.get(url.replace(url.split("/")[3], uuid.uuid4().hex), headers=stranger)
        assert foreign.status_code == never.status_code == 404, url
        assert foreign.json()["issue"][0]["code"] == never.json()["issue"][0]["code"]
    refused, missing = create(http, stranger, observation(pid)), create(http, stranger, observation("no-such"))
    assert refused.status_code == missing.status_code and refused.status_code in (400, 404)


def test_asvs_4_4_2_websocket_origin_checked_at_the_handshake(server: LiveServer) -> None:
    """ASVS 5.0 V4.4.2: a WebSocket handshake from an Origin that is neither the public URL nor an allowed one is
    refused with 403 before any frame; the public URL's origin, and a client sending none (not a browser), are
    let through to authenticate."""
    for origin in ("https://evil.example", "null", server.settings.public_url + ".evil.example",
                   "http://127.0.0.1:1"):
        with pytest.raises(InvalidStatus) as refused:
            opened(server, origin=origin)
        assert refused.value.response.status_code == 403, origin
    opened(server, origin=server.settings.public_url).close()
    opened(server).close()


TOKEN_WORDS = re.compile(r"(^|[^a-z])(access_?token|token|bearer|jwt|auth(orization)?|api_?key|session)($|[^a-z])",
                         re.IGNORECASE)


def test_asvs_14_2_1_no_token_in_any_url(server: LiveServer, network: Network) -> None:
    """ASVS 5.0 V14.2.1 (sensitive data only in bodies and headers, never in URLs): no operation of the OpenAPI
    description takes a token-like query or path parameter; docs/push-protocol.md puts none in the /ws URL; and a
    valid token offered in the URL — /ws?token=…&access_token=…, /fhir/Patient?access_token=… — authenticates
    nothing."""
    spec = server.app.openapi()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("query", "path"):
                    assert not TOKEN_WORDS.search(parameter["name"]), (method, path, parameter["name"])
    manual = (ROOT / "docs" / "push-protocol.md").read_text()
    assert not re.search(r"[?&](access_)?token=", manual) and "Tokens never go in the URL" in manual
    token = token_of(network, "physician")
    url = server.base_url.replace("http://", "ws://") + f"/ws?token={token}&access_token={token}"
    with connect(url, open_timeout=10, subprotocols=[Subprotocol(protocol.SUBPROTOCOL)]) as socket:
        socket.send(json.dumps({"type": "subscribe", "since": None}))
        refused = receive(socket)
        assert refused["type"] == "error" and refused["code"] == protocol.UNAUTHENTICATED
    http = server.client()
    for url in (f"/fhir/Patient?access_token={token}", f"/auth/me?access_token={token}"):
        answer = http.get(url)
        assert answer.status_code == 401, (url, answer.status_code)


def test_asvs_14_3_2_no_store_on_every_answer_with_patient_data(server: LiveServer) -> None:
    """ASVS 5.0 V14.3.2 (anti-caching headers on sensitive data): every answer carrying patient data — read,
    vread, history, search (GET and POST), _include, $document, $emergency-summary, $diff, $read-status, a batch,
    an error about a patient — says Cache-Control: no-store."""
    network = open_network(server)
    http, doctor = server.client(), network.bearer("physician")
    pid = created_id(create(http, doctor, patient()))
    created_id(create(http, doctor, consent(pid)))
    sheet = created_id(create(http, doctor, example("DischargeSheet", pid)))
    created_id(create(http, doctor, example("EmergencySheet", pid)))
    msg = created_id(create(http, doctor, message(pid, "本日の様子")))
    answers = {
        "read": http.get(f"/fhir/Patient/{pid}", headers=doctor),
        "vread": http.get(f"/fhir/Patient/{pid}/_history/1", headers=doctor),
        "history": http.get(f"/fhir/Patient/{pid}/_history", headers=doctor),
        "type history": http.get("/fhir/QuestionnaireResponse/_history", headers=doctor),
        "search": http.get("/fhir/QuestionnaireResponse", params={"patient": pid}, headers=doctor),
        "search POST": http.post("/fhir/Patient/_search", data={"_id": pid}, headers=doctor),
        "include": http.get("/fhir/QuestionnaireResponse", params={"_id": sheet, "_include":
                                                                   "QuestionnaireResponse:subject"}, headers=doctor),
        "$document": http.get(f"/fhir/QuestionnaireResponse/{sheet}/$document", headers=doctor),
        "$diff": http.get(f"/fhir/QuestionnaireResponse/{sheet}/$diff", params={"from": 1, "to": 1},
                          headers=doctor),
        "$emergency-summary": http.get(f"/fhir/Patient/{pid}/$emergency-summary", headers=doctor),
        "$read-status": http.get(f"/fhir/Communication/{msg}/$read-status", headers=doctor),
        "create": create(http, doctor, observation(pid)),
        "batch": http.post("/fhir", headers={**doctor, **FHIR_JSON}, json={
            "resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient/{pid}"}}]}),
        "error": http.get(f"/fhir/QuestionnaireResponse/{sheet}/$diff", params={"from": 1, "to": 9},
                          headers=doctor),
    }
    for what, answer in answers.items():
        assert answer.status_code < 500, (what, answer.text[:200])
        assert "no-store" in answer.headers.get("cache-control", ""), (what, answer.headers)
        if what != "error":
            assert answer.status_code in (200, 201), (what, answer.status_code, answer.text[:200])


# Logs -----------------------------------------------------------------------------------------------------------


def _output(capfd: pytest.CaptureFixture[str], *request_ids: str) -> str:
    """What the process printed, once each request's access-log line is in it (written just after its answer)."""
    output = ""
    deadline = time.monotonic() + 5
    while True:
        output += capfd.readouterr().out
        if all(f'"request_id":"{rid}"' in output for rid in request_ids) or time.monotonic() > deadline:
            return output
        time.sleep(0.02)


def _lines(output: str) -> list[Json]:
    """Every log line, each required to be one JSON object."""
    parsed = []
    for raw in output.splitlines():
        if raw.strip():
            line = json.loads(raw)
            assert isinstance(line, dict), raw
            parsed.append(line)
    return parsed


def _line_of(lines: list[Json], request_id: str) -> Json:
    (line,) = [x for x in lines if x.get("request_id") == request_id and x.get("event") == "request"]
    return line


def test_asvs_16_3_1_authentication_and_authorisation_outcomes_are_logged(
    server: LiveServer, network: Network, capfd: pytest.CaptureFixture[str]
) -> None:
    """ASVS 5.0 V16.3.1 (authentication operations logged, failures included) and V16.3.2 (failed authorisation
    logged): a wrong password, a good login, a forged token and a 403 each leave a JSON log line naming the route
    and its outcome (status), the authenticated ones a user pseudonym — and none holds the password or token."""
    http = server.client()
    nurse = network.bearer("nurse")
    token = nurse["Authorization"].split()[1]
    capfd.readouterr()
    user = network.user("nurse")
    wrong = http.post("/auth/login", json={"username": user["username"], "password": "wrong " + PASSWORD},
                      headers={"X-Request-ID": "sec-login-bad"})
    good = http.post("/auth/login", json={"username": network.user("clerk")["username"], "password": PASSWORD},
                     headers={"X-Request-ID": "sec-login-good"})
    forged = http.get("/fhir/Patient", headers={"Authorization": f"Bearer {token[:-6]}AAAAAA",
                                                "X-Request-ID": "sec-token-bad"})
    denied = http.get("/fhir/AuditEvent", headers={**nurse, "X-Request-ID": "sec-denied"})
    assert (wrong.status_code, good.status_code, forged.status_code, denied.status_code) == (401, 200, 401, 403)
    output = _output(capfd, "sec-login-bad", "sec-login-good", "sec-token-bad", "sec-denied")
    lines = _lines(output)
    for request_id, route, status in (("sec-login-bad", "/auth/login", 401), ("sec-login-good", "/auth/login", 200),
                                      ("sec-token-bad", "/fhir/{resource_type}", 401),
                                      ("sec-denied", "/fhir/AuditEvent", 403)):
        line = _line_of(lines, request_id)
        assert line["route"] == route and line["status"] == status, line
        assert line["level"] in ("info", "warning", "error") and line["timestamp"]
    assert re.fullmatch(r"[0-9a-f]{16}", _line_of(lines, "sec-denied")["user"])
    for secret in (PASSWORD, token, token[-24:], good.json()["access_token"][-24:], good.json()["refresh_token"]):
        assert secret not in output


HOSTILE_TEXT = 'x"}\r\n{"event":"forged","level":"critical"}\n\u2028\u0000\\u0000\x1b[2J</script>'


def test_asvs_16_4_1_no_log_injection(server: LiveServer, network: Network,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    """ASVS 5.0 V16.4.1 (log encoding): a username, request-id header, user agent, search parameters and a
    WebSocket frame full of CR/LF, quotes, braces, NUL and escape sequences leave every log line one valid JSON
    object, and no line the input tried to forge."""
    http = server.client()
    auth = network.bearer("physician")
    capfd.readouterr()
    http.post("/auth/login", json={"username": HOSTILE_TEXT, "password": HOSTILE_TEXT},
              headers={"X-Request-ID": "sec-inject-login"})
    http.get("/fhir/Patient", params={"name": HOSTILE_TEXT, HOSTILE_TEXT: "x"},
             headers={**auth, "X-Request-ID": "sec-inject-search", "User-Agent": 'a"}{"event":"forged"'})
    http.get("/fhir/Patient", headers={**auth, "X-Request-ID": 'x"}{"event":"forged"}'})
    http.get(f"/fhir/Patient/{quote(HOSTILE_TEXT, safe='')}", headers={**auth, "X-Request-ID": "sec-inject-path"})
    socket = opened(server)
    socket.send(HOSTILE_TEXT)
    socket.close()
    output = _output(capfd, "sec-inject-login", "sec-inject-search", "sec-inject-path")
    lines = _lines(output)  # each line parses as one JSON object
    assert len(lines) >= 4
    assert not [line for line in lines if line.get("event") == "forged" or line.get("level") == "critical"]
    ids = {line.get("request_id") for line in lines}
    assert {"sec-inject-login", "sec-inject-search", "sec-inject-path"} <= ids
    assert not any('"' in str(rid) or "{" in str(rid) for rid in ids)


LEAKS = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|/home/|/usr/|(?i:sqlalchemy|psycopg|sqlite3|"
                   r"pydantic_core)|\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b|"
                   r"\b[A-Z][A-Za-z]*(Error|Exception)\b|0x[0-9a-f]{6,}|<[a-z_.]+ object at")


def test_asvs_16_5_1_generic_error_messages(server: LiveServer, network: Network) -> None:
    """ASVS 5.0 V16.5.1 (generic messages, no internals): malformed JSON, an unknown type, an unknown route, a wrong
    method, a bad search, a body of the wrong media type, a stale If-Match, a duplicate organisation id and a
    burst of concurrent updates of one resource and of posts with one Idempotency-Key (racing on keys in the
    database: the loser's insert breaks a unique constraint) are each refused
    in a well-formed answer with no stack trace, SQL, file path, exception class or memory address."""
    http = server.client()
    auth, admin = network.bearer("physician"), network.bearer("admin")
    pid = created_id(create(http, auth, patient()))
    obs = created_id(create(http, auth, observation(pid)))
    json_body = {**auth, **FHIR_JSON}
    answers = [
        http.post("/fhir/Patient", content=b'{"resourceType": "Patient", "name": [', headers=json_body),
        http.post("/fhir/Patient", content=b"\xff\xfe\x00", headers=json_body),
        http.get("/fhir/NoSuchType", headers=auth),
        http.get("/fhir/Patient/x/y/z/w", headers=auth),
        http.patch(f"/fhir/Patient/{pid}", content=b"{}", headers=json_body),
        http.get("/fhir/Patient", params={"birthdate": "gt2026-13-45", "_count": "-1"}, headers=auth),
        http.get("/fhir/Patient", params={"_sort": "'; DROP TABLE resources; --"}, headers=auth),
        http.post("/fhir/Patient", content=b"<Patient/>", headers={**auth, "Content-Type": "application/xml"}),
        http.put(f"/fhir/Observation/{obs}", json={**observation(pid), "id": obs},
                 headers={**json_body, "If-Match": 'W/"7"'}),
        http.post("/auth/login", content=b"{", headers={"Content-Type": "application/json"}),
        http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "' OR 1=1 --"}),
        http.post("/auth/admin/organizations", json={"id": network.orgs["clinic"], "name": "重複", "type": "clinic"},
                  headers=admin),
        http.get("/auth/admin/users/%00%27", headers=admin),
    ]

    def update(n: int) -> httpx.Response:
        body = {**observation(pid, 36.0 + n / 10), "id": obs}
        return server.client().put(f"/fhir/Observation/{obs}", json=body, headers={**json_body, "If-Match": 'W/"1"'})

    def retry(n: int) -> httpx.Response:  # one Idempotency-Key, concurrently: the key's row is the constraint raced
        return server.client().post("/fhir/Patient", json=same, headers={**json_body, "Idempotency-Key": key})

    key, same = uuid.uuid4().hex, patient()
    with ThreadPoolExecutor(8) as pool:
        raced = list(pool.map(update, range(8)))
        retried = list(pool.map(retry, range(8)))
    assert sum(answer.status_code == 200 for answer in raced) <= 1
    assert {answer.status_code for answer in retried} <= {201, 409}
    assert len({answer.json()["id"] for answer in retried if answer.status_code == 201}) == 1  # stored once
    answers += raced + retried
    refusals = [answer for answer in answers if answer.status_code >= 400]
    assert len(refusals) >= len(answers) - 9
    assert {409, 412} & {answer.status_code for answer in refusals}
    for answer in refusals:
        assert answer.status_code < 500, (answer.request.url, answer.text[:300])
        found = LEAKS.search(answer.text)
        assert not found, (answer.request.method, str(answer.request.url), found.group(0), answer.text[:400])
        body = answer.json()
        assert body.get("resourceType") == "OperationOutcome" or isinstance(body.get("error"), str), body


def test_asvs_16_2_5_planted_patient_strings_never_reach_the_logs(
    server: LiveServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """ASVS 5.0 V16.2.5 (sensitive data not logged) and V14.2.4: distinctive strings planted in a patient's name
    and identifier, a sheet, a message, a search and an update travel through create, read, search, update,
    $document, messages and the WebSocket while everything the server prints is captured: none of them — nor
    the access token, nor the password — appears in any log line, though the lines are there."""
    planted = uuid.uuid4().hex[:12]
    name, ident, note, text_ = (f"渡辺PLANTED-{planted}", f"PLANTED-ID-{planted}", f"PLANTED-NOTE-{planted}",
                                f"PLANTED-MSG-{planted}")
    capfd.readouterr()
    network = open_network(server)
    http = server.client()
    login = network.login("physician")
    token = login["access_token"]
    doctor = {"Authorization": f"Bearer {token}"}
    body = patient(family=name, given="花子", identifier=ident)
    pid = created_id(create(http, doctor, body))
    created_id(create(http, doctor, consent(pid)))
    add_to_team(http, doctor, pid, f"Practitioner/{network.user('nurse')['id']}")
    socket = subscribed(server, token_of(network, "nurse"))
    sheet = created_id(create(http, doctor, response(pid, note=note)))
    msg = created_id(create(http, doctor, message(pid, text_)))
    assert http.get(f"/fhir/Patient/{pid}", headers=doctor).status_code == 200
    for query in ({"family": name}, {"identifier": ident}, {"name:contains": planted}, {"_content": note}):
        assert http.get("/fhir/Patient", params=query, headers=doctor).status_code in (200, 400)
    assert http.post("/fhir/Patient/_search", data={"family": name}, headers=doctor).status_code == 200
    assert http.put(f"/fhir/Patient/{pid}", json={**body, "id": pid, "name": [{"family": name + "-改"}]},
                    headers={**doctor, **FHIR_JSON}).status_code == 200
    assert http.get(f"/fhir/QuestionnaireResponse/{sheet}/$document", headers=doctor).status_code == 200
    assert http.post(f"/fhir/Communication/{msg}/$read", headers=doctor).status_code in (200, 204)
    nurse = network.bearer("nurse")
    assert http.get("/fhir/Communication", params={"patient": pid}, headers=nurse).status_code == 200
    refused = http.post("/fhir/Patient", json={**body, "gender": name}, headers={**doctor, **FHIR_JSON})
    assert refused.status_code == 400  # a refusal naming the bad value answers it — and logs nothing of it
    events_until(socket, {("Communication", msg)})
    socket.close()
    http.post("/auth/login", json={"username": name, "password": PASSWORD})  # a patient's name as a username
    output = _output(capfd)
    time.sleep(0.3)  # the last access-log lines are written just after their answers
    output += capfd.readouterr().out
    lines = _lines(output)
    assert sum(line.get("event") == "request" for line in lines) >= 15, "the capture saw no access log"
    for secret in (name, ident, note, text_, planted, "渡辺", token, token[-24:], login["refresh_token"], PASSWORD,
                   pid):
        assert secret not in output, secret
