"""The `renkei` command as a newcomer and an administrator use it: real processes, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.infra import free_port
from tests.planted import FAMILY, MARKER, log_path, register_secret
from tests.test_bootstrap import description

RENKEI = [sys.executable, "-m", "services.cli"]


def run(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RENKEI_DATA_DIR": str(data_dir), "RENKEI_ARGON2_MEMORY_KIB": "1024",
                   "RENKEI_ARGON2_TIME_COST": "1", "RENKEI_ARGON2_PARALLELISM": "1", "COLUMNS": "200", **env}
    return subprocess.run(RENKEI + args, env=environment, capture_output=True, text=True, timeout=120, check=False)


def test_bootstrap_command_is_idempotent_and_honours_the_data_dir(tmp_path: Path) -> None:
    file = tmp_path / "network.json"
    data = description()
    file.write_bytes(orjson.dumps(data))
    first = run(["admin", "bootstrap", str(file)], tmp_path / "data")
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert (tmp_path / "data" / "auth.db").exists()
    assert (tmp_path / "data" / "share.db").exists()
    second = run(["admin", "bootstrap", str(file)], tmp_path / "data")
    assert second.returncode == 0
    assert "nothing to change" in second.stdout
    listing = run(["admin", "users", data["network"]["id"]], tmp_path / "data")
    assert data["users"][0]["username"] in listing.stdout


def test_bootstrap_command_explains_a_bad_file(tmp_path: Path) -> None:
    file = tmp_path / "network.json"
    data = description()
    data["users"][0]["profession"] = "wizard"
    file.write_bytes(orjson.dumps(data))
    answer = run(["admin", "bootstrap", str(file)], tmp_path / "data")
    assert answer.returncode == 1
    assert "wizard" in answer.stdout
    file.write_text("{not json")
    answer = run(["admin", "bootstrap", str(file)], tmp_path / "data")
    assert answer.returncode == 1 and "not valid JSON" in answer.stdout
    file.write_bytes(orjson.dumps({"network": {"id": "x"}}))
    answer = run(["admin", "bootstrap", str(file)], tmp_path / "data")
    assert answer.returncode == 1 and "network.name" in answer.stdout


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    port = free_port()
    data_dir = tmp_path / "demo-data"
    environment = {**os.environ, "RENKEI_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    environment.pop("RENKEI_PUBLIC_URL", None)
    log = log_path("demo-serve")  # searched for planted strings and secrets at the end of the run
    with log.open("ab") as output:
        process = subprocess.Popen([*RENKEI, "serve", "--port", str(port), "--demo"], env=environment,
                                   stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"renkei serve did not come up:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield base, data_dir, log
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_demo_brings_up_the_documented_endpoints(demo_server: tuple[str, Path, Path]) -> None:
    base, data_dir, log = demo_server
    for path in ("/healthz", "/readyz", "/fhir/metadata", "/auth/jwks.json"):
        assert httpx.get(base + path).status_code == 200, path
    assert httpx.get(base + "/fhir/metadata").json()["fhirVersion"] == "4.3.0"
    # Generated keys are private to the server's user.
    for key_file in (data_dir / "keys").iterdir():
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The demo login works as the README tells it: password, then `renkei demo code`.
    step = httpx.post(base + "/auth/login", json={"username": "demo-physician", "password": "demo-password-2026"})
    assert step.json()["mfa_required"] is True
    code = run(["demo", "code", "demo-physician"], data_dir).stdout.strip()
    tokens = httpx.post(base + "/auth/login/mfa", json={"mfa_token": step.json()["mfa_token"], "code": code})
    assert tokens.status_code == 200, tokens.text
    register_secret("access token", tokens.json()["access_token"])
    register_secret("refresh token", tokens.json()["refresh_token"])
    whoami = httpx.get(base + "/auth/me", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"})
    assert whoami.json()["organization"] == "demo-clinic"
    # And the demo hospital system client can get a token with `renkei demo assertion`.
    assertion = run(["demo", "assertion", "--public-url", base], data_dir).stdout.strip()
    client_token = httpx.post(base + "/auth/token", data={
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion, "scope": "system/Patient.rs"})
    assert client_token.status_code == 200, client_token.text
    assert client_token.json()["scope"] == "system/Patient.rs"
    # A search's query names the patient: `renkei serve` logs the request (its route template), never the query.
    searched = httpx.get(base + "/fhir/Patient", params={"name": FAMILY, "identifier": MARKER},
                         headers={"Authorization": f"Bearer {client_token.json()['access_token']}"})
    assert searched.status_code == 200, searched.text
    time.sleep(0.5)  # the server's output reaches its file
    logged = log.read_text(errors="replace")
    assert '"route":"/fhir/{resource_type}"' in logged and MARKER not in logged, logged[-2000:]


@pytest.mark.skipif(sys.platform != "linux", reason="reads worker sockets from /proc and ss (Linux)")
def test_serve_with_workers_listens_in_every_worker_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ, "RENKEI_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    environment.pop("RENKEI_PUBLIC_URL", None)
    with log_path("serve-workers").open("ab") as output:
        process = subprocess.Popen([*RENKEI, "serve", "--port", str(port), "--workers", "2"], env=environment,
                                   stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            # A fresh connection each time: the kernel spreads new connections over the workers' sockets.
            try:
                with httpx.Client(base_url=base, timeout=2) as client:
                    if client.get("/healthz").status_code == 200:
                        workers |= _worker_pids(process.pid, port)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(workers) == 2, "both workers should be listening"
        with httpx.Client(base_url=base, timeout=5) as client:
            for _ in range(20):
                assert client.get("/fhir/metadata").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0
    assert not _worker_pids(process.pid, port), "no worker may outlive the server"


def _worker_pids(parent: int, port: int) -> set[int]:
    """Children of ``parent`` that hold a socket listening on ``port``."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        children = []
    listening = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                               check=False).stdout
    return {int(child) for child in children if f"pid={child}," in listening}
