"""Observability: request ids, the access log, GET /metrics, security headers — against the live server."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.kit.secrets import load_or_create_key
from tests.fhir_helpers import FHIR_JSON
from tests.infra import LiveServer, Network

SEARCH = "/fhir/{resource_type}"


def _patient(http: httpx.Client, auth: dict[str, str]) -> str:
    answer = http.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "記録"}]},
                       headers={**auth, **FHIR_JSON})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _access_lines(output: str, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in output.splitlines():
        if request_id not in raw:
            continue
        line = json.loads(raw)
        if line.get("event") == "request" and line.get("request_id") == request_id:
            lines.append(line)
    return lines


def _logged(capfd: pytest.CaptureFixture[str], *request_ids: str) -> str:
    """What the server printed, once the access-log line of each of ``request_ids`` is in it (a line is written
    just after its answer is sent)."""
    output = ""
    deadline = time.monotonic() + 5
    while True:
        output += capfd.readouterr().out
        if all(_access_lines(output, rid) for rid in request_ids) or time.monotonic() > deadline:
            return output
        time.sleep(0.02)


def test_a_well_formed_request_id_comes_back_and_others_are_replaced(http: httpx.Client) -> None:
    assert http.get("/healthz", headers={"X-Request-ID": "tablet-7f3a.01_x"}).headers["x-request-id"] == \
        "tablet-7f3a.01_x"
    generated = set()
    for sent in (None, "no spaces allowed", "x" * 65, "üñí".encode()):
        headers: dict[str, Any] = {"X-Request-ID": sent} if sent else {}
        answer = http.get("/healthz", headers=headers)
        assert answer.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"]), answer.headers["x-request-id"]
        generated.add(answer.headers["x-request-id"])
    assert len(generated) == 4


def test_one_access_log_line_per_request_without_query_or_token(
    http: httpx.Client, auth: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    pid = _patient(http, auth)
    capfd.readouterr()
    token = auth["Authorization"].split()[1]
    search = http.get("/fhir/Patient?name=%E5%B1%B1%E7%94%B0%E5%A4%AA%E9%83%8E&family=Secretname",
                      headers={**auth, "X-Request-ID": "log-search-1"})
    read = http.get(f"/fhir/Patient/{pid}", headers={**auth, "X-Request-ID": "log-read-1"})
    assert search.status_code == 200 and read.status_code == 200
    output = _logged(capfd, "log-search-1", "log-read-1")
    [line] = _access_lines(output, "log-search-1")
    assert line["method"] == "GET" and line["route"] == SEARCH and line["status"] == 200
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    [read_line] = _access_lines(output, "log-read-1")
    assert read_line["route"] == "/fhir/{resource_type}/{resource_id}"
    # Neither the query (names), nor the raw path (ids), nor the token reaches the log.
    for secret in ("Secretname", "name=", "%E5", "山田", token, token[-20:], pid):
        assert secret not in output


def test_the_access_log_names_an_authenticated_user_by_pseudonym_only(
    server: LiveServer, network: Network, http: httpx.Client, auth: dict[str, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    capfd.readouterr()
    assert http.get("/fhir/Patient", headers={**auth, "X-Request-ID": "log-user-1"}).status_code == 200
    assert http.get("/fhir/metadata", headers={"X-Request-ID": "log-anonymous-1"}).status_code == 200
    output = _logged(capfd, "log-user-1", "log-anonymous-1")
    [line] = _access_lines(output, "log-user-1")
    [anonymous] = _access_lines(output, "log-anonymous-1")
    assert "user" not in anonymous
    key = load_or_create_key(Path(server.settings.resolved_key_dir) / "log-pseudonym.key")
    subject = network.user("physician")["id"]
    assert line["user"] == hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:16]
    assert subject not in output


def test_metrics_from_loopback_hold_route_templates_only(
    server: LiveServer, http: httpx.Client, auth: dict[str, str]
) -> None:
    pid = _patient(http, auth)
    assert http.get(f"/fhir/Patient/{pid}", headers=auth).status_code == 200
    assert http.get("/fhir/Patient?family=Secretname", headers=auth).status_code == 200
    assert http.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.token"}).status_code == 401
    local = httpx.Client(base_url=server.base_url)  # no X-Forwarded-For: the caller is 127.0.0.1
    answer = local.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'renkei_http_request_duration_seconds_count{method="GET",route="/fhir/{resource_type}/{resource_id}",' \
           'status="2xx"}' in text
    assert 'renkei_http_request_duration_seconds_bucket{le="0.01",method="GET",route="/fhir/{resource_type}",' \
           'status="2xx"}' in text
    assert re.search(r'renkei_token_failures_total\{error="invalid_token",service="fhir"\} [1-9]', text)
    for name in ("renkei_ws_connections", "renkei_event_log_lag_seconds", "renkei_delivery_failures_total",
                 "renkei_delivery_retries_total", "renkei_rate_limited_total"):
        assert f"# TYPE {name}" in text
    assert pid not in text and "Secretname" not in text


def test_metrics_are_not_found_outside_the_allowed_networks(http: httpx.Client) -> None:
    answer = http.get("/metrics")  # posing as a documentation address through the trusted proxy header
    assert answer.status_code == 404
    assert "renkei_" not in answer.text


def test_security_headers_on_a_fhir_read(http: httpx.Client, auth: dict[str, str]) -> None:
    pid = _patient(http, auth)
    answer = http.get(f"/fhir/Patient/{pid}", headers=auth)
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-request-id"]
    # A route's own Cache-Control stands (the JWKS may be cached), and headers are never doubled.
    jwks = http.get("/auth/jwks.json")
    assert jwks.headers["cache-control"] == "public, max-age=60"
    assert jwks.headers.get_list("x-content-type-options") == ["nosniff"]
    # An error answer carries them too.
    missing = http.get("/fhir/Patient/does-not-exist", headers=auth)
    assert missing.status_code == 404 and missing.headers["x-frame-options"] == "DENY"


def _gauge(server: LiveServer, name: str) -> float:
    text = httpx.Client(base_url=server.base_url).get("/metrics").text
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return value


def test_open_websockets_are_counted(server: LiveServer) -> None:
    from websockets.sync.client import connect

    before = _gauge(server, "renkei_ws_connections")
    with connect(server.base_url.replace("http://", "ws://") + "/ws", open_timeout=10):
        assert _gauge(server, "renkei_ws_connections") == before + 1
    deadline = time.monotonic() + 5
    while _gauge(server, "renkei_ws_connections") != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(server, "renkei_ws_connections") == before
