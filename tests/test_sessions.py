"""Sessions: refresh rotation and reuse detection, logout, registered devices, expiry and revocation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select, update

from services.auth.audit.models import SecurityEvent
from services.auth.sessions.models import Device, LoginSession, RefreshToken
from services.kit.db import utcnow
from services.kit.secrets import sha256_hex
from tests.infra import PASSWORD, LiveServer, Network, next_totp_code
from tests.planted import register_secret

# Helpers -------------------------------------------------------------------------------------------------


def claims(access_token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(access_token, options={"verify_signature": False})
    return decoded


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def refresh(server: LiveServer, refresh_token: str, http: httpx.Client | None = None) -> httpx.Response:
    answer = (http or server.client()).post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})
    if answer.status_code == 200:  # the rotated pair: searched for in every log line at the end of the run
        register_secret("access token", answer.json().get("access_token"))
        register_secret("refresh token", answer.json().get("refresh_token"))
    return answer


def refreshed(server: LiveServer, tokens: dict[str, Any]) -> dict[str, Any]:
    answer = refresh(server, tokens["refresh_token"])
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def assert_invalid_grant(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"
    assert "access_token" not in answer.json()


def me(server: LiveServer, tokens: dict[str, Any]) -> httpx.Response:
    return server.client().get("/auth/me", headers=bearer(tokens))


def register_device(server: LiveServer, tokens: dict[str, Any], name: str = "訪問用タブレット") -> str:
    answer = server.client().post("/auth/devices", json={"name": name}, headers=bearer(tokens))
    assert answer.status_code == 201, answer.text
    device_id: str = answer.json()["id"]
    return device_id


def events(server: LiveServer, type: str, **where: Any) -> list[SecurityEvent]:
    query = select(SecurityEvent).where(SecurityEvent.type == type)
    for column, value in where.items():
        query = query.where(getattr(SecurityEvent, column) == value)
    with server.auth.db.transaction() as db:
        found = list(db.scalars(query.order_by(SecurityEvent.id)))
        db.expunge_all()
    return found


def session_row(server: LiveServer, session_id: str) -> LoginSession:
    with server.auth.db.transaction() as db:
        row = db.get(LoginSession, session_id)
        assert row is not None
        db.expunge(row)
    return row


def assert_locked_out_within_one_access_token_lifetime(tokens: dict[str, Any]) -> None:
    """A revoked session's access tokens are not recalled from the share service; they must simply die soon."""
    remaining = claims(tokens["access_token"])["exp"] - time.time()
    assert 0 < remaining <= 600


# Refresh rotation ----------------------------------------------------------------------------------------


def test_refresh_rotates_the_pair_within_the_same_session(server: LiveServer, network: Network) -> None:
    first = network.login("care_manager")
    answer = refresh(server, first["refresh_token"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    second = answer.json()
    assert second["token_type"] == "Bearer"
    assert second["expires_in"] == 600
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    old, new = claims(first["access_token"]), claims(second["access_token"])
    assert new["sid"] == old["sid"]
    assert new["sub"] == old["sub"] == network.user("care_manager")["id"]
    assert new["jti"] != old["jti"]
    with server.auth.db.transaction() as db:
        used = db.get(RefreshToken, sha256_hex(first["refresh_token"]))
        fresh = db.get(RefreshToken, sha256_hex(second["refresh_token"]))
        assert used is not None and fresh is not None
        assert used.used_at is not None
        assert fresh.used_at is None
        assert used.session_id == fresh.session_id == old["sid"]
    # The new access token is good at the identity service.
    assert me(server, second).json()["session"] == old["sid"]


def test_a_chain_of_refreshes_keeps_the_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("clerk")
    sid = claims(tokens["access_token"])["sid"]
    seen = {tokens["refresh_token"]}
    for _ in range(3):
        tokens = refreshed(server, tokens)
        assert claims(tokens["access_token"])["sid"] == sid
        assert tokens["refresh_token"] not in seen
        seen.add(tokens["refresh_token"])


def test_refresh_tokens_are_stored_hashed(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    sid = claims(tokens["access_token"])["sid"]
    with server.auth.db.transaction() as db:
        hashes = list(db.scalars(select(RefreshToken.token_hash).where(RefreshToken.session_id == sid)))
    assert hashes == [sha256_hex(tokens["refresh_token"])]
    assert tokens["refresh_token"] not in hashes


def test_refresh_also_works_for_a_session_opened_with_a_second_factor(server: LiveServer, network: Network) -> None:
    tokens = network.login("physician")
    again = refreshed(server, tokens)
    assert claims(again["access_token"])["sid"] == claims(tokens["access_token"])["sid"]
    assert claims(again["access_token"])["sub"] == network.user("physician")["id"]


# Reuse detection -----------------------------------------------------------------------------------------


def test_a_used_refresh_token_revokes_the_whole_session(server: LiveServer, network: Network) -> None:
    first = network.login("care_manager")
    sid = claims(first["access_token"])["sid"]
    second = refreshed(server, first)

    # The rotated-out token comes back (a stolen copy, or a confused client).
    assert_invalid_grant(refresh(server, first["refresh_token"]))

    # The legitimate holder's newest refresh token is dead too, and so are the session's access tokens at /auth.
    assert_invalid_grant(refresh(server, second["refresh_token"]))
    for tokens in (first, second):
        answer = me(server, tokens)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "invalid_token"
    row = session_row(server, sid)
    assert row.revoked_at is not None
    assert row.revoked_reason == "refresh_token_reuse"
    assert_locked_out_within_one_access_token_lifetime(second)


def test_refresh_reuse_is_a_security_event(server: LiveServer, network: Network) -> None:
    http = server.client(address="198.51.100.23")
    first = network.login("care_manager")
    sid = claims(first["access_token"])["sid"]
    refreshed(server, first)
    assert_invalid_grant(refresh(server, first["refresh_token"], http=http))
    found = events(server, "refresh_reuse_detected", session_id=sid)
    assert len(found) == 1
    event = found[0]
    assert event.outcome == "failure"
    assert event.user_id == network.user("care_manager")["id"]
    assert event.network_id == network.id
    assert event.address == "198.51.100.23"
    assert first["refresh_token"] not in repr((event.detail, event.address))


def test_reuse_ends_only_that_session(server: LiveServer, network: Network) -> None:
    victim = network.login("care_manager")
    other = network.login("care_manager")
    refreshed(server, victim)
    assert_invalid_grant(refresh(server, victim["refresh_token"]))
    assert me(server, other).status_code == 200
    refreshed(server, other)


def test_unknown_refresh_token_is_invalid_grant(server: LiveServer) -> None:
    assert_invalid_grant(refresh(server, "not-a-refresh-token-that-was-ever-issued"))


def test_refresh_grant_without_a_token_is_invalid_request(server: LiveServer) -> None:
    answer = server.client().post("/auth/token", data={"grant_type": "refresh_token"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


def test_unsupported_grant_type(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    answer = server.client().post("/auth/token", data={"grant_type": "password",
                                                       "refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 400
    assert answer.json()["error"] == "unsupported_grant_type"


# Logout --------------------------------------------------------------------------------------------------


def test_logout_with_the_bearer_token_ends_the_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    sid = claims(tokens["access_token"])["sid"]
    http = server.client()
    answer = http.post("/auth/logout", headers=bearer(tokens))
    assert answer.status_code == 204
    assert answer.content == b""
    assert_invalid_grant(refresh(server, tokens["refresh_token"]))
    assert me(server, tokens).status_code == 401
    assert session_row(server, sid).revoked_reason == "logout"
    # The bearer no longer names an open session, so a second logout with it is refused.
    assert http.post("/auth/logout", headers=bearer(tokens)).status_code == 401
    logged = events(server, "logout", session_id=sid)
    assert [e.outcome for e in logged] == ["success"]
    assert logged[0].user_id == network.user("care_manager")["id"]


def test_logout_with_the_refresh_token_ends_the_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    answer = server.client().post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 204
    assert_invalid_grant(refresh(server, tokens["refresh_token"]))
    assert me(server, tokens).status_code == 401


def test_logout_with_a_rotated_refresh_token_still_ends_the_session(server: LiveServer, network: Network) -> None:
    first = network.login("care_manager")
    second = refreshed(server, first)
    assert server.client().post("/auth/logout", json={"refresh_token": first["refresh_token"]}).status_code == 204
    assert_invalid_grant(refresh(server, second["refresh_token"]))


def test_logout_ends_only_its_own_session(server: LiveServer, network: Network) -> None:
    leaving = network.login("care_manager")
    staying = network.login("care_manager")
    assert server.client().post("/auth/logout", headers=bearer(leaving)).status_code == 204
    assert me(server, staying).status_code == 200
    refreshed(server, staying)


@pytest.mark.parametrize("how", ["nothing", "empty body", "unknown refresh token", "garbage bearer"])
def test_logout_without_a_credential_is_401(server: LiveServer, network: Network, how: str) -> None:
    tokens = network.login("care_manager")
    http = server.client()
    if how == "nothing":
        answer = http.post("/auth/logout")
    elif how == "empty body":
        answer = http.post("/auth/logout", json={})
    elif how == "unknown refresh token":
        answer = http.post("/auth/logout", json={"refresh_token": "never-issued"})
    else:
        answer = http.post("/auth/logout", headers={"Authorization": "Bearer not.a.jwt"})
    assert answer.status_code == 401, answer.text
    # Nothing was ended along the way.
    assert me(server, tokens).status_code == 200
    refreshed(server, tokens)


# Devices -------------------------------------------------------------------------------------------------


def test_registering_a_device_binds_the_current_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    sid = claims(tokens["access_token"])["sid"]
    answer = server.client().post("/auth/devices", json={"name": "訪問用タブレット1"}, headers=bearer(tokens))
    assert answer.status_code == 201, answer.text
    device = answer.json()
    assert device["name"] == "訪問用タブレット1"
    assert device["revoked"] is False
    assert device["id"] and device["created_at"]

    listed = server.client().get("/auth/devices", headers=bearer(tokens))
    assert listed.status_code == 200
    assert listed.json() == [device]

    assert session_row(server, sid).device_id == device["id"]
    # The token in hand predates the binding; the next one names the device.
    assert "did" not in claims(tokens["access_token"])
    again = refreshed(server, tokens)
    assert claims(again["access_token"])["did"] == device["id"]
    assert claims(again["access_token"])["sid"] == sid
    assert me(server, again).json()["device"] == device["id"]
    sessions = server.client().get("/auth/sessions", headers=bearer(again)).json()
    assert {"id": sid, "device": device["id"]}.items() <= next(s for s in sessions if s["id"] == sid).items()

    recorded = events(server, "device_registered", device_id=device["id"])
    assert [e.user_id for e in recorded] == [network.user("care_manager")["id"]]


def test_devices_are_listed_per_user(server: LiveServer, network: Network) -> None:
    mine = network.login("care_manager")
    theirs = network.login("clerk")
    first = register_device(server, mine, "タブレットA")
    second = register_device(server, mine, "タブレットB")
    register_device(server, theirs, "事務所PC")
    listed = server.client().get("/auth/devices", headers=bearer(mine)).json()
    assert [(d["id"], d["name"]) for d in listed] == [(first, "タブレットA"), (second, "タブレットB")]


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x" * 201}, {"name": "t", "user": "someone"}])
def test_malformed_device_registration_is_a_400(server: LiveServer, network: Network, body: dict[str, Any]) -> None:
    tokens = network.login("care_manager")
    answer = server.client().post("/auth/devices", json=body, headers=bearer(tokens))
    assert answer.status_code == 400
    assert server.client().get("/auth/devices", headers=bearer(tokens)).json() == []


def test_device_endpoints_need_a_live_session(server: LiveServer, network: Network) -> None:
    http = server.client()
    assert http.post("/auth/devices", json={"name": "t"}).status_code == 401
    assert http.get("/auth/devices").status_code == 401
    tokens = network.login("care_manager")
    http.post("/auth/logout", headers=bearer(tokens))
    assert http.post("/auth/devices", json={"name": "t"}, headers=bearer(tokens)).status_code == 401


def test_login_naming_the_device_puts_it_in_the_tokens(server: LiveServer, network: Network) -> None:
    device = register_device(server, network.login("care_manager"))
    tokens = network.login("care_manager", device_id=device)
    assert claims(tokens["access_token"])["did"] == device
    assert claims(refreshed(server, tokens)["access_token"])["did"] == device


def test_login_with_a_second_factor_keeps_the_device(server: LiveServer, network: Network) -> None:
    device = register_device(server, network.login("physician"))
    tokens = network.login("physician", device_id=device)
    assert claims(tokens["access_token"])["did"] == device


@pytest.mark.parametrize("role", ["clerk", "physician"])
def test_login_with_someone_elses_or_an_unknown_device_is_refused(server: LiveServer, network: Network,
                                                                  role: str) -> None:
    foreign = register_device(server, network.login("care_manager"))
    user = network.user(role)
    for device_id in (foreign, "0" * 32):
        answer = server.client().post("/auth/login", json={"username": user["username"], "password": PASSWORD,
                                                           "device_id": device_id})
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "invalid_device"
        assert "access_token" not in answer.json() and "mfa_token" not in answer.json()


def _sessions_on_and_off_a_device(server: LiveServer, network: Network) -> dict[str, dict[str, Any]]:
    """care_manager's sessions: two on the tablet (the registering one, a later login), one without a device,
    one on another tablet."""
    registering = network.login("care_manager")
    tablet = register_device(server, registering, "紛失予定のタブレット")
    bound = refreshed(server, registering)
    on_tablet = network.login("care_manager", device_id=tablet)
    spare_session = network.login("care_manager")
    spare = register_device(server, spare_session, "予備タブレット")
    on_spare = network.login("care_manager", device_id=spare)
    no_device = network.login("care_manager")
    assert claims(bound["access_token"])["did"] == claims(on_tablet["access_token"])["did"] == tablet
    return {"tablet": {"id": tablet}, "bound": bound, "on_tablet": on_tablet, "on_spare": on_spare,
            "no_device": no_device, "spare": {"id": spare}}


def _assert_device_locked_out(server: LiveServer, network: Network, s: dict[str, dict[str, Any]]) -> None:
    for name in ("bound", "on_tablet"):
        assert_invalid_grant(refresh(server, s[name]["refresh_token"]))
        assert me(server, s[name]).status_code == 401
        assert_locked_out_within_one_access_token_lifetime(s[name])
    answer = server.client().post("/auth/login", json={"username": network.user("care_manager")["username"],
                                                       "password": PASSWORD, "device_id": s["tablet"]["id"]})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_device"
    # Sessions elsewhere carry on.
    for name in ("on_spare", "no_device"):
        assert me(server, s[name]).status_code == 200
        refreshed(server, s[name])
    assert claims(network.login("care_manager", device_id=s["spare"]["id"])["access_token"])["did"] == s["spare"]["id"]
    for name in ("bound", "on_tablet"):
        assert session_row(server, claims(s[name]["access_token"])["sid"]).revoked_reason == "device_revoked"


def test_user_revoking_their_device_ends_its_sessions(server: LiveServer, network: Network) -> None:
    s = _sessions_on_and_off_a_device(server, network)
    answer = server.client().delete(f"/auth/devices/{s['tablet']['id']}", headers=bearer(s["no_device"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["revoked"] is True
    _assert_device_locked_out(server, network, s)
    listed = server.client().get("/auth/devices", headers=bearer(s["no_device"])).json()
    assert {d["id"]: d["revoked"] for d in listed} == {s["tablet"]["id"]: True, s["spare"]["id"]: False}
    recorded = events(server, "device_revoked", device_id=s["tablet"]["id"])
    assert len(recorded) == 1
    assert recorded[0].detail == {"by": "user", "sessions_ended": 2}


def test_admin_revoking_a_users_device_ends_its_sessions(server: LiveServer, network: Network) -> None:
    s = _sessions_on_and_off_a_device(server, network)
    user_id = network.user("care_manager")["id"]
    admin = network.bearer("admin")
    listed = server.client().get(f"/auth/admin/users/{user_id}/devices", headers=admin)
    assert listed.status_code == 200
    assert {d["id"] for d in listed.json()} == {s["tablet"]["id"], s["spare"]["id"]}
    answer = server.client().delete(f"/auth/admin/users/{user_id}/devices/{s['tablet']['id']}", headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["revoked"] is True
    _assert_device_locked_out(server, network, s)
    recorded = events(server, "device_revoked", device_id=s["tablet"]["id"])
    assert len(recorded) == 1
    assert recorded[0].detail["by"] == f"admin:{network.user('admin')['id']}"


def test_revoking_the_device_in_use_ends_the_callers_own_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    device = register_device(server, tokens)
    answer = server.client().delete(f"/auth/devices/{device}", headers=bearer(tokens))
    assert answer.status_code == 200
    assert_invalid_grant(refresh(server, tokens["refresh_token"]))
    assert me(server, tokens).status_code == 401


def test_a_device_revoked_twice_stays_revoked(server: LiveServer, network: Network) -> None:
    device = register_device(server, network.login("care_manager"))
    caller = network.login("care_manager")
    first = server.client().delete(f"/auth/devices/{device}", headers=bearer(caller))
    second = server.client().delete(f"/auth/devices/{device}", headers=bearer(caller))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_a_user_cannot_revoke_another_users_device(server: LiveServer, network: Network) -> None:
    owner = network.login("care_manager")
    device = register_device(server, owner)
    intruder = network.login("clerk")
    answer = server.client().delete(f"/auth/devices/{device}", headers=bearer(intruder))
    assert answer.status_code == 404
    assert server.client().delete("/auth/devices/no-such-device", headers=bearer(intruder)).status_code == 404
    refreshed(server, owner)
    with server.auth.db.transaction() as db:
        row = db.get(Device, device)
        assert row is not None and row.revoked_at is None


def test_admin_must_name_the_devices_owner(server: LiveServer, network: Network) -> None:
    owner = network.login("care_manager")
    device = register_device(server, owner)
    admin = network.bearer("admin")
    wrong_user = network.user("clerk")["id"]
    answer = server.client().delete(f"/auth/admin/users/{wrong_user}/devices/{device}", headers=admin)
    assert answer.status_code == 404
    refreshed(server, owner)


def test_a_device_revoked_during_the_second_factor_yields_no_tokens(server: LiveServer, network: Network) -> None:
    """The password step named the tablet; the tablet is reported lost before the code is typed."""
    user = network.user("physician")
    device = register_device(server, network.login("physician"))
    http = server.client()
    step = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD, "device_id": device})
    assert step.status_code == 200 and step.json()["mfa_required"] is True
    admin = network.bearer("admin")
    assert server.client().delete(f"/auth/admin/users/{user['id']}/devices/{device}",
                                  headers=admin).status_code == 200
    answer = http.post("/auth/login/mfa", json={"mfa_token": step.json()["mfa_token"], "code": next_totp_code(user)})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_device"
    assert "access_token" not in answer.json()


# Expiry and revocation by the administrator --------------------------------------------------------------


@pytest.mark.parametrize("what", ["session", "refresh token"])
def test_an_expired_session_or_refresh_token_cannot_refresh(server: LiveServer, network: Network, what: str) -> None:
    tokens = network.login("care_manager")
    sid = claims(tokens["access_token"])["sid"]
    past = utcnow() - timedelta(seconds=1)
    with server.auth.db.transaction() as db:
        if what == "session":
            db.execute(update(LoginSession).where(LoginSession.id == sid).values(expires_at=past))
        else:
            db.execute(update(RefreshToken).where(RefreshToken.session_id == sid).values(expires_at=past))
    assert_invalid_grant(refresh(server, tokens["refresh_token"]))
    refused = events(server, "refresh", session_id=sid, outcome="failure")
    assert [e.detail.get("reason") for e in refused] == ["expired"]


def test_refresh_tokens_never_outlive_their_session(server: LiveServer, network: Network) -> None:
    tokens = network.login("care_manager")
    sid = claims(tokens["access_token"])["sid"]
    soon = utcnow() + timedelta(seconds=60)
    with server.auth.db.transaction() as db:
        db.execute(update(LoginSession).where(LoginSession.id == sid).values(expires_at=soon))
    again = refreshed(server, tokens)
    with server.auth.db.transaction() as db:
        row = db.get(RefreshToken, sha256_hex(again["refresh_token"]))
        assert row is not None
        assert row.expires_at <= soon


def test_disabling_a_user_ends_their_sessions(server: LiveServer, network: Network) -> None:
    sessions = [network.login("care_manager"), network.login("care_manager")]
    bystander = network.login("clerk")
    user_id = network.user("care_manager")["id"]
    answer = server.client().patch(f"/auth/admin/users/{user_id}", json={"disabled": True},
                                   headers=network.bearer("admin"))
    assert answer.status_code == 200
    assert answer.json()["disabled"] is True
    for tokens in sessions:
        assert_invalid_grant(refresh(server, tokens["refresh_token"]))
        assert me(server, tokens).status_code == 401
        assert session_row(server, claims(tokens["access_token"])["sid"]).revoked_reason == "user_disabled"
        assert_locked_out_within_one_access_token_lifetime(tokens)
    refreshed(server, bystander)
    # Enabling the account again does not bring the old sessions back.
    server.client().patch(f"/auth/admin/users/{user_id}", json={"disabled": False}, headers=network.bearer("admin"))
    assert_invalid_grant(refresh(server, sessions[0]["refresh_token"]))
    refreshed(server, network.login("care_manager"))


def test_a_user_disabled_during_the_second_factor_gets_no_tokens(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    http = server.client()
    step = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert step.status_code == 200 and step.json()["mfa_required"] is True
    answer = server.client().patch(f"/auth/admin/users/{user['id']}", json={"disabled": True},
                                   headers=network.bearer("admin"))
    assert answer.status_code == 200
    answer = http.post("/auth/login/mfa", json={"mfa_token": step.json()["mfa_token"], "code": next_totp_code(user)})
    # Disabling cancels the pending login at once.
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_mfa_token"
    assert "access_token" not in answer.json()
    # The challenge is spent: enabling the account again does not revive it.
    server.client().patch(f"/auth/admin/users/{user['id']}", json={"disabled": False}, headers=network.bearer("admin"))
    answer = http.post("/auth/login/mfa", json={"mfa_token": step.json()["mfa_token"], "code": next_totp_code(user)})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_mfa_token"


def test_a_password_change_by_the_admin_ends_the_users_sessions(server: LiveServer, network: Network) -> None:
    user = network.user("care_manager")
    old = network.login("care_manager")
    admin_tokens = network.login("admin")
    answer = server.client().patch(f"/auth/admin/users/{user['id']}", json={"password": "a brand new passphrase"},
                                   headers=bearer(admin_tokens))
    assert answer.status_code == 200
    assert_invalid_grant(refresh(server, old["refresh_token"]))
    assert me(server, old).status_code == 401
    assert session_row(server, claims(old["access_token"])["sid"]).revoked_reason == "password_changed"
    http = server.client()
    assert http.post("/auth/login", json={"username": user["username"], "password": PASSWORD}).status_code == 401
    assert http.post("/auth/login", json={"username": user["username"],
                                          "password": "a brand new passphrase"}).status_code == 200
    # The administrator's own session is untouched.
    refreshed(server, admin_tokens)


def test_other_changes_by_the_admin_leave_sessions_alone(server: LiveServer, network: Network) -> None:
    user = network.user("care_manager")
    tokens = network.login("care_manager")
    answer = server.client().patch(f"/auth/admin/users/{user['id']}", json={"name": "改名 太郎"},
                                   headers=network.bearer("admin"))
    assert answer.status_code == 200
    refreshed(server, tokens)


# Concurrency ---------------------------------------------------------------------------------------------


def race_refresh(server: LiveServer, refresh_token: str, times: int) -> list[httpx.Response]:
    """Send one refresh token from several clients at once."""
    barrier = threading.Barrier(times)
    clients = [server.client() for _ in range(times)]

    def go(http: httpx.Client) -> httpx.Response:
        barrier.wait()
        return refresh(server, refresh_token, http)

    with ThreadPoolExecutor(times) as pool:
        return list(pool.map(go, clients))


def test_one_refresh_token_sent_concurrently_rotates_only_once(server: LiveServer, network: Network) -> None:
    """A stolen copy replayed at the same moment as the real client must not fork the session unnoticed."""
    for _ in range(3):
        answers = race_refresh(server, network.login("care_manager")["refresh_token"], 4)
        assert sorted(a.status_code for a in answers) == [200, 400, 400, 400], [a.text for a in answers]
        winner = next(a.json() for a in answers if a.status_code == 200)
        # The losers were reuse: the session is over, the winner's new token included.
        assert_invalid_grant(refresh(server, winner["refresh_token"]))


def test_a_password_change_cancels_logins_waiting_for_their_code(server: LiveServer) -> None:
    from tests.infra import PASSWORD, make_network, next_totp_code

    network = make_network(server)
    user = network.user("physician")  # has a second factor
    http = server.client()
    pending = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD}).json()
    changed = http.patch(f"/auth/admin/users/{user['id']}", json={"password": "a completely new password"},
                         headers=network.bearer("admin"))
    assert changed.status_code == 200
    answer = http.post("/auth/login/mfa", json={"mfa_token": pending["mfa_token"], "code": next_totp_code(user)})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_mfa_token"


def test_an_expired_session_is_refused_by_the_identity_service(server: LiveServer, network: Network) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from services.auth.sessions.models import LoginSession

    tokens = network.login("care_manager")
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    with server.auth.db.transaction() as db:
        db.execute(update(LoginSession).where(LoginSession.id == sid)
                   .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    me = server.client().get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 401


def test_the_second_step_rechecks_the_account_itself(server: LiveServer, network: Network) -> None:
    """Even if the account is disabled by a path that leaves pending logins alone (here: straight in the
    database), the second step looks at the account again and refuses."""
    from sqlalchemy import update

    from services.auth.directory.models import User

    user = network.user("physician")
    http = server.client()
    step = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    with server.auth.db.transaction() as db:
        db.execute(update(User).where(User.id == user["id"]).values(disabled=True))
    answer = http.post("/auth/login/mfa", json={"mfa_token": step.json()["mfa_token"], "code": next_totp_code(user)})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_credentials"
    refused = events(server, "mfa", user_id=user["id"], outcome="failure")
    assert [e.detail.get("reason") for e in refused] == ["disabled"]
