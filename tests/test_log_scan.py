"""The end-of-run log scan (tests/planted.py) can fail: it finds the planted marker and registered secrets in a log
file, and the capture it relies on sees what the services log, from the live server's threads too."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from pathlib import Path

import pytest
import structlog

from tests import planted
from tests.fhir_helpers import patient
from tests.infra import LiveServer


def registry(directory: Path, **values: str) -> None:
    rows = "".join(f"{kind.replace('_', ' ')}\t{value}\n" for kind, value in values.items())
    (directory / "secrets-gw9-1.tsv").write_text(rows, encoding="utf-8")


def test_the_scan_finds_the_planted_marker_and_secrets_and_names_only_their_kind(tmp_path: Path) -> None:
    marker = "PLANTEDx7Q" + secrets.token_hex(5).upper()
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0." + secrets.token_urlsafe(64)
    refresh = secrets.token_urlsafe(32)
    registry(tmp_path, access_token=token, refresh_token=refresh, test_password="correct horse battery staple")
    log = tmp_path / "structlog-gw9-1.log"
    log.write_bytes(b"\n".join([
        b'{"event": "request", "path": "/fhir/Patient", "status": 200}',
        f'{{"event": "x", "family": "山田{marker}"}}'.encode(),  # line 2: the marker inside a name
        b'{"event": "clean", "request_id": "' + uuid.uuid4().hex.encode() + b'"}',
        f'{{"event": "y", "authorization": "Bearer {token}"}}'.encode(),  # 4: a whole token
        f'{{"event": "z", "cut": "...{token[-30:]}"}}'.encode(),  # 5: only the token's end
        f"refresh={refresh}&grant_type=refresh_token".encode(),  # 6: a refresh token in a form body
        b"login failed for password correct horse battery staple",  # 7: the password
    ]))
    elsewhere = tmp_path / "elsewhere" / "server-0.log"
    elsewhere.parent.mkdir()
    elsewhere.write_text(f"INFO patient {marker}-0123456789 created\n", encoding="utf-8")
    (tmp_path / "files-gw9-1.txt").write_text(f"{elsewhere}\n", encoding="utf-8")

    scanned = planted.Scanned()
    hits = planted.scan(planted.log_files(tmp_path), planted.needles(tmp_path, marker), scanned)
    found = {(hit.path.name, hit.line, hit.what) for hit in hits}
    assert found == {
        ("structlog-gw9-1.log", 2, "planted patient marker"),
        ("structlog-gw9-1.log", 4, "access token"),
        ("structlog-gw9-1.log", 5, "access token"),
        ("structlog-gw9-1.log", 6, "refresh token"),
        ("structlog-gw9-1.log", 7, "test password"),
        ("server-0.log", 1, "planted patient marker"),
    }
    assert (scanned.files, scanned.lines) == (2, 8)
    for hit in hits:  # the report names the kind; the secret itself is never printed
        assert token[-24:] not in hit.excerpt and refresh[-24:] not in hit.excerpt
        assert "correct horse" not in hit.excerpt and marker not in hit.excerpt
        assert f"<{hit.what}>" in hit.excerpt


def test_the_scan_finds_nothing_in_clean_logs(tmp_path: Path) -> None:
    marker = "PLANTEDx7Q" + secrets.token_hex(5).upper()
    token = secrets.token_urlsafe(40)
    registry(tmp_path, access_token=token)
    (tmp_path / "logging-gw9-1.log").write_text(
        "uvicorn.error WARNING PLANTEDx7Q0000000000 is another run's marker\n"
        f'{{"event": "request", "request_id": "{uuid.uuid4().hex}{uuid.uuid4().hex}", "prefix": "{token[:20]}"}}\n'
        f"{token[-23:]} is shorter than a tail\n", encoding="utf-8")
    assert planted.scan(planted.log_files(tmp_path), planted.needles(tmp_path, marker)) == []


def test_the_factories_plant_the_marker_in_a_patient_and_a_sheet() -> None:
    body = patient()
    assert planted.MARKER in body["name"][0]["family"] and body["name"][0]["family"] == planted.FAMILY
    assert planted.MARKER in body["name"][0]["text"]
    assert body["identifier"][0]["value"].startswith(planted.MARKER)
    assert planted.MARKER in planted.NOTE


@pytest.mark.skipif(not planted.ENABLED, reason="RENKEI_TEST_LOG_SCAN=0: no capture")
def test_the_capture_sees_structlog_logging_uvicorn_and_the_live_servers_access_log(server: LiveServer) -> None:
    """Lines logged through the services' own structlog configuration, the stdlib root logger, uvicorn's error
    logger (which does not propagate) and the live server's access log (its request id) reach the run's files."""
    probe = f"capture-probe-{uuid.uuid4().hex}"
    structlog.get_logger("renkei.test").warning("capture_probe", probe=f"{probe}-structlog")
    logging.getLogger("renkei.test").warning("%s-logging", probe)
    logging.getLogger("uvicorn.error").warning("%s-uvicorn", probe)
    with server.client() as http:
        assert http.get("/fhir/metadata", headers={"X-Request-ID": f"{probe}-access"}).status_code == 200
    needles = {f"{probe}-{where}": where for where in ("structlog", "logging", "uvicorn", "access")}
    seen: set[str] = set()
    for _ in range(50):  # the access log line is written just after the answer
        seen = {hit.what for hit in planted.scan(planted.log_files(), needles)}
        if seen == set(needles.values()):
            break
        time.sleep(0.05)
    assert seen == {"structlog", "logging", "uvicorn", "access"}
