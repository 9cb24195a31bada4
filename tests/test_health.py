"""Liveness and readiness, including a real Redis when one is configured."""

from __future__ import annotations

import httpx
import pytest

from services.app import create_app
from tests.infra import LiveServer, free_port, settings_for_tests


def test_healthz_and_readyz(server: LiveServer) -> None:
    http = server.client()
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"auth_database": "ok", "auth_signing_key": "ok", "share_database": "ok",
                                      "share_jwks": "ok"}


@pytest.mark.redis
def test_readyz_checks_a_configured_redis(tmp_path: object, redis_url: str) -> None:
    ready, _ = _readyz_with(str(tmp_path), redis_url=redis_url)
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"] == "ok"


def test_readyz_reports_an_unreachable_redis_but_stays_ready(tmp_path: object) -> None:
    """Push and rate limits fall back without Redis: the instance is degraded, not out of service."""
    ready, _ = _readyz_with(str(tmp_path), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"].startswith("error")


def test_readyz_reports_an_unreachable_jwks(tmp_path: object) -> None:
    ready, _ = _readyz_with(str(tmp_path), share_jwks_url=f"http://127.0.0.1:{free_port()}/auth/jwks.json")
    assert ready.status_code == 503
    assert ready.json()["checks"]["share_jwks"].startswith("error")


def test_unreachable_jwks_is_a_503_outcome_not_a_500(tmp_path: object) -> None:
    """When the identity service's keys cannot be fetched, callers are told to retry, not that they failed."""
    dead = f"http://127.0.0.1:{free_port()}/auth/jwks.json"
    answer, _ = _readyz_with(str(tmp_path), path="/fhir/Patient", share_jwks_url=dead)
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/fhir+json")
    assert answer.json()["issue"][0]["code"] == "transient"


def _readyz_with(data_dir: str, path: str = "/readyz", **overrides: str) -> tuple[httpx.Response, LiveServer]:
    from services.kit.db import make_engine
    from services.kit.migrate import upgrade

    port = free_port()
    settings = settings_for_tests(data_dir, port, **overrides)
    for service in ("auth", "share"):
        engine = make_engine(getattr(settings, f"resolved_{service}_database_url"))
        upgrade(service, engine)
        engine.dispose()
    live = LiveServer(settings, port).start()
    try:
        http = live.client()
        if path == "/readyz":
            return http.get(path), live
        # Any well-formed ES256 token will do: the keys to check it against are what is missing.
        with live.auth.db.transaction() as db:
            token, _ = live.auth.signer.issue(db, {"sub": "x", "kind": "user", "net": "n", "org": "o"})
        return http.get(path, headers={"Authorization": f"Bearer {token}"}), live
    finally:
        live.stop()


def test_app_factory_builds_each_service_alone() -> None:
    only_auth = create_app(settings_for_tests("/tmp/unused", 1), share=False)
    paths = set(only_auth.openapi()["paths"])
    assert "/auth/login" in paths and "/fhir/metadata" not in paths
    only_share = create_app(settings_for_tests("/tmp/unused", 1), auth=False)
    paths = set(only_share.openapi()["paths"])
    assert "/fhir/metadata" in paths and "/auth/login" not in paths


def test_openapi_documents_the_share_services_headers_and_bearer_token() -> None:
    # Headers the hot routes read themselves must stay in the published description, as declared ones were.
    spec = create_app(settings_for_tests("/tmp/unused", 1), auth=False).openapi()
    create = spec["paths"]["/fhir/{resource_type}"]["post"]
    headers = {p["name"] for p in create["parameters"] if p["in"] == "header"}
    assert headers == {"prefer", "if-none-exist", "idempotency-key"}
    assert create["security"] == [{"bearer": []}]
    assert spec["paths"]["/fhir/{resource_type}/{resource_id}"]["get"]["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token from the auth service (/auth/login, /auth/token)",
    }
