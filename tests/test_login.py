"""Password login, token claims, same answer for unknown users, the security log."""

from __future__ import annotations

import time

import jwt
import pytest
from sqlalchemy import select

from services.auth.audit.models import SecurityEvent
from tests.infra import PASSWORD, LiveServer, Network


def test_login_without_second_factor_returns_a_token_pair(server: LiveServer, network: Network) -> None:
    answer = server.client().post("/auth/login", json={"username": network.user("care_manager")["username"],
                                                      "password": PASSWORD})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert answer.headers["cache-control"] == "no-store"


def test_access_token_carries_the_contract_claims(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    header = jwt.get_unverified_header(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    user = network.user("care_manager")
    assert header["alg"] == "ES256" and header["kid"]
    assert claims["iss"] == f"{server.base_url}/auth"
    assert claims["aud"] == f"{server.base_url}/fhir"
    assert claims["sub"] == user["id"]
    assert claims["net"] == network.id
    assert claims["org"] == user["organization"]
    assert claims["prof"] == "care-manager"
    assert "user/*.cruds" in claims["scope"].split()
    assert claims["sid"] and claims["jti"]
    assert "did" not in claims
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 30


def test_admin_users_get_the_admin_scope(network: Network) -> None:
    admin_scope = jwt.decode(network.login("admin")["access_token"], options={"verify_signature": False})["scope"]
    user_scope = jwt.decode(network.login("care_manager")["access_token"],
                            options={"verify_signature": False})["scope"]
    assert "admin" in admin_scope.split()
    assert "admin" not in user_scope.split()


def test_unknown_user_and_wrong_password_get_the_same_answer(server: LiveServer, network: Network) -> None:
    http = server.client()
    wrong_password = http.post("/auth/login", json={"username": network.user("care_manager")["username"],
                                                    "password": "not the password"})
    unknown_user = http.post("/auth/login", json={"username": "nobody-at-all", "password": "not the password"})
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json() == {
        "error": "invalid_credentials", "error_description": "invalid username or password"}


def test_disabled_user_cannot_log_in(server: LiveServer, network: Network) -> None:
    admin = network.bearer("admin")
    user = network.user("care_manager")
    http = server.client()
    assert http.patch(f"/auth/admin/users/{user['id']}", json={"disabled": True}, headers=admin).status_code == 200
    answer = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_credentials"


@pytest.mark.parametrize("body", [{}, {"username": "x"}, {"username": "x", "password": "y", "extra": 1},
                                  {"username": 5, "password": []}])
def test_malformed_login_is_a_400(server: LiveServer, body: dict[str, object]) -> None:
    answer = server.client().post("/auth/login", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


def test_login_is_audited_without_secrets(server: LiveServer, network: Network) -> None:
    user = network.user("care_manager")
    http = server.client(address="198.51.100.77")
    http.post("/auth/login", json={"username": user["username"], "password": "wrong-password-xyz"})
    tokens = network.login("care_manager", http=http)
    with server.auth.db.transaction() as db:
        events = db.scalars(select(SecurityEvent).where(SecurityEvent.user_id == user["id"])).all()
        kinds = {(e.type, e.outcome) for e in events}
        assert ("login", "failure") in kinds and ("login", "success") in kinds
        assert any(e.address == "198.51.100.77" for e in events)
        dump = repr([(e.type, e.detail, e.address) for e in events])
    for secret in ("wrong-password-xyz", PASSWORD, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in dump


def test_password_hash_is_argon2id(server: LiveServer, network: Network) -> None:
    from services.auth.directory.models import User

    with server.auth.db.transaction() as db:
        stored = db.get(User, network.user("care_manager")["id"])
        assert stored is not None
        assert stored.password_hash.startswith("$argon2id$")
        assert PASSWORD not in stored.password_hash
