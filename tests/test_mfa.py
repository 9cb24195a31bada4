"""The TOTP second factor: the challenge, the window, replay protection, enrolment, recovery codes, storage."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pyotp
import pytest
from sqlalchemy import select, text

from services.auth.audit.models import SecurityEvent
from services.auth.base import AuthBase
from services.auth.directory.models import RecoveryCode, User
from services.auth.sessions.models import MfaChallenge
from services.kit.db import utcnow
from services.kit.secrets import sha256_hex
from tests.infra import PASSWORD, LiveServer, Network, make_network, raw_database_bytes

TOKEN_KEYS = {"access_token", "refresh_token"}


# Helpers -------------------------------------------------------------------------------------------------


def stable_step() -> int:
    """The current TOTP step, first waiting out the last 2 s of a step so the server checks in that same step."""
    remaining = 30 - time.time() % 30
    if remaining < 2:
        time.sleep(remaining + 0.05)
    return int(time.time() // 30)


def code_at(secret: str, step: int) -> str:
    return str(pyotp.TOTP(secret).generate_otp(step))


def wrong_code(secret: str, step: int) -> str:
    """A well-formed code that matches no step anywhere near ``step``."""
    near = {code_at(secret, s) for s in range(step - 3, step + 4)}
    return next(c for c in (f"{n:06d}" for n in range(0, 1_000_000, 7919)) if c not in near)


def password_step(server: LiveServer, user: dict[str, Any], http: httpx.Client | None = None) -> dict[str, Any]:
    http = http or server.client()
    answer = http.post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def mfa_token(server: LiveServer, user: dict[str, Any], http: httpx.Client | None = None) -> str:
    body = password_step(server, user, http)
    assert body["mfa_required"] is True, body
    token: str = body["mfa_token"]
    return token


def second_step(server: LiveServer, token: str, code: str, http: httpx.Client | None = None) -> httpx.Response:
    return (http or server.client()).post("/auth/login/mfa", json={"mfa_token": token, "code": code})


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def enrol_by_login(server: LiveServer, user: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Enrol a user of an MFA-required network through the login flow → (secret, step used, token answer)."""
    http = server.client()
    body = password_step(server, user, http)
    assert body.get("mfa_enrollment_required") is True, body
    started = http.post("/auth/mfa/totp/enroll", json={"mfa_token": body["mfa_token"]})
    assert started.status_code == 200, started.text
    secret: str = started.json()["secret"]
    step = stable_step()
    answer = second_step(server, body["mfa_token"], code_at(secret, step), http)
    assert answer.status_code == 200, answer.text
    return secret, step, answer.json()


# The challenge ---------------------------------------------------------------------------------------------


def test_password_alone_gives_a_challenge_and_no_tokens(server: LiveServer, network: Network) -> None:
    answer = server.client().post("/auth/login", json={"username": network.user("physician")["username"],
                                                      "password": PASSWORD})
    assert answer.status_code == 200
    body = answer.json()
    assert body["mfa_required"] is True
    assert isinstance(body["mfa_token"], str) and len(body["mfa_token"]) >= 32
    assert body["expires_in"] == server.settings.mfa_challenge_ttl_seconds
    assert "mfa_enrollment_required" not in body
    assert not TOKEN_KEYS & set(body)
    assert answer.headers["cache-control"] == "no-store"


def test_correct_code_gives_tokens(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    token = mfa_token(server, user)
    answer = second_step(server, token, code_at(user["totp_secret"], stable_step()))
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert set(tokens) >= TOKEN_KEYS
    assert tokens["token_type"] == "Bearer"
    assert "recovery_codes" not in tokens
    assert answer.headers["cache-control"] == "no-store"
    me = server.client().get("/auth/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json()["id"] == user["id"] and me.json()["mfa_enabled"] is True


def test_wrong_code_is_invalid_code(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    token = mfa_token(server, user)
    step = stable_step()
    for code in (wrong_code(user["totp_secret"], step), "12345", "abcdef", user["totp_secret"][:6]):
        answer = second_step(server, token, code)
        assert answer.status_code == 401, (code, answer.text)
        assert answer.json()["error"] == "invalid_code"
        assert not TOKEN_KEYS & set(answer.json())
    # Fewer than five wrong codes: the challenge still stands.
    assert second_step(server, token, code_at(user["totp_secret"], step)).status_code == 200


def test_a_code_cannot_be_used_twice(server: LiveServer, network: Network) -> None:
    user = network.user("nurse")
    step = stable_step()
    code = code_at(user["totp_secret"], step)
    assert second_step(server, mfa_token(server, user), code).status_code == 200
    second_token = mfa_token(server, user)
    replay = second_step(server, second_token, code)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_code"
    # An earlier step is no better than the same one once a later step has been used.
    assert second_step(server, second_token, code_at(user["totp_secret"], step - 1)).status_code == 401
    # The next step's code is fresh.
    assert second_step(server, second_token, code_at(user["totp_secret"], step + 1)).status_code == 200


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_codes_one_step_either_side_are_accepted(server: LiveServer, offset: int) -> None:
    user = make_network(server).user("physician")
    token = mfa_token(server, user)
    answer = second_step(server, token, code_at(user["totp_secret"], stable_step() + offset))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_codes_further_away_are_refused(server: LiveServer, offset: int) -> None:
    user = make_network(server).user("physician")
    token = mfa_token(server, user)
    step = stable_step()
    far = code_at(user["totp_secret"], step + offset)
    if far in {code_at(user["totp_secret"], s) for s in (step - 1, step, step + 1)}:
        pytest.skip("one-in-a-million collision with a code inside the window")
    answer = second_step(server, token, far)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_code"


def test_five_wrong_codes_burn_the_challenge(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    http = server.client(address=f"192.0.2.{uuid.uuid4().int % 250 + 1}")
    token = mfa_token(server, user, http)
    step = stable_step()
    for _ in range(5):
        answer = second_step(server, token, wrong_code(user["totp_secret"], step), http)
        assert answer.status_code == 401
        assert answer.json()["error"] == "invalid_code"
    with server.auth.db.transaction() as db:
        challenge = db.get(MfaChallenge, sha256_hex(token))
        assert challenge is not None and challenge.attempts == 5 and challenge.used_at is not None
    burned = second_step(server, token, code_at(user["totp_secret"], step), http)
    assert burned.status_code == 401
    assert burned.json()["error"] == "invalid_mfa_token"
    # The password must be given again; then the (still unused) code works.
    fresh = second_step(server, mfa_token(server, user, http), code_at(user["totp_secret"], step), http)
    assert fresh.status_code == 200, fresh.text


def test_unknown_expired_and_used_mfa_tokens_are_refused(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    secret = user["totp_secret"]
    step = stable_step()

    unknown = second_step(server, secrets.token_urlsafe(32), code_at(secret, step))
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_mfa_token"

    expired_token = mfa_token(server, user)
    with server.auth.db.transaction() as db:
        challenge = db.get(MfaChallenge, sha256_hex(expired_token))
        assert challenge is not None
        challenge.expires_at = utcnow() - timedelta(seconds=1)
    expired = second_step(server, expired_token, code_at(secret, step))
    assert expired.status_code == 401
    assert expired.json()["error"] == "invalid_mfa_token"

    used_token = mfa_token(server, user)
    assert second_step(server, used_token, code_at(secret, step)).status_code == 200
    reused = second_step(server, used_token, code_at(secret, step + 1))
    assert reused.status_code == 401
    assert reused.json()["error"] == "invalid_mfa_token"


# Enrolment ---------------------------------------------------------------------------------------------------


def test_clinical_user_without_totp_must_enrol_when_the_network_requires_mfa(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    user = network.user("care_manager")
    http = server.client()
    body = password_step(server, user, http)
    assert body["mfa_required"] is True and body["mfa_enrollment_required"] is True
    assert not TOKEN_KEYS & set(body)
    token = body["mfa_token"]

    # Nothing pending yet: no code can complete the enrolment challenge.
    early = second_step(server, token, "123456", http)
    assert early.status_code == 401 and early.json()["error"] == "invalid_code"

    started = http.post("/auth/mfa/totp/enroll", json={"mfa_token": token})
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    uri = started.json()["otpauth_uri"]
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert unquote(parts.path) == f"/Renkei:{user['username']}"
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Renkei"]
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.secret == secret and parsed.issuer == "Renkei" and parsed.digits == 6 and parsed.interval == 30

    with server.auth.db.transaction() as db:
        pending = db.get(User, user["id"])
        assert pending is not None and pending.totp_secret_sealed is not None and pending.totp_enabled is False

    step = stable_step()
    wrong = second_step(server, token, wrong_code(secret, step), http)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_code"
    answer = second_step(server, token, code_at(secret, step), http)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert set(tokens) >= TOKEN_KEYS
    codes = tokens["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10 and all(isinstance(c, str) and len(c) >= 10 for c in codes)
    assert http.get("/auth/me", headers=bearer(tokens)).json()["mfa_enabled"] is True

    # From now on the login asks for a code (no longer an enrolment), and the enrolled secret answers it.
    again = password_step(server, user, http)
    assert again["mfa_required"] is True and "mfa_enrollment_required" not in again
    assert http.post("/auth/mfa/totp/enroll", json={"mfa_token": again["mfa_token"]}).status_code == 400
    final = second_step(server, again["mfa_token"], code_at(secret, step + 1), http)
    assert final.status_code == 200, final.text
    assert "recovery_codes" not in final.json()


def test_non_clinical_user_logs_in_with_a_password_alone_in_an_mfa_network(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    body = password_step(server, network.user("clerk"))
    assert set(body) >= TOKEN_KEYS
    assert "mfa_required" not in body
    # While a clinical user without a second factor gets no tokens from the password.
    assert not TOKEN_KEYS & set(password_step(server, network.user("care_manager")))


def test_recovery_codes_work_once_each_and_are_stored_hashed(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    user = network.user("care_manager")
    _, _, tokens = enrol_by_login(server, user)
    codes: list[str] = tokens["recovery_codes"]

    first = second_step(server, mfa_token(server, user), codes[0])
    assert first.status_code == 200, first.text
    assert set(first.json()) >= TOKEN_KEYS
    reused = second_step(server, mfa_token(server, user), codes[0])
    assert reused.status_code == 401 and reused.json()["error"] == "invalid_code"
    # Typed loosely (upper case, surrounding spaces), another code still works.
    loose = second_step(server, mfa_token(server, user), f"  {codes[1].upper()} ")
    assert loose.status_code == 200, loose.text

    with server.auth.db.transaction() as db:
        rows = db.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user["id"])).all()
        assert len(rows) == 10
        assert sum(1 for r in rows if r.used_at is not None) == 2
        stored = repr([(r.code_hash, r.used_at) for r in rows])
        raw = repr(db.execute(text("SELECT * FROM recovery_codes")).all())
    for code in codes:
        assert code not in stored and code not in raw
        assert code.replace("-", "") not in raw


def test_bearer_enrolment_for_a_logged_in_user(server: LiveServer, network: Network) -> None:
    user = network.user("care_manager")
    http = server.client()
    tokens = password_step(server, user, http)
    assert set(tokens) >= TOKEN_KEYS
    auth = bearer(tokens)

    assert http.post("/auth/mfa/totp/enroll").status_code == 401
    started = http.post("/auth/mfa/totp/enroll", headers=auth)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    assert pyotp.parse_uri(started.json()["otpauth_uri"]).secret == secret

    # Pending, not active: the password alone still logs in.
    assert set(password_step(server, user, http)) >= TOKEN_KEYS

    step = stable_step()
    wrong = http.post("/auth/mfa/totp/confirm", json={"code": wrong_code(secret, step)}, headers=auth)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_code"
    confirmed = http.post("/auth/mfa/totp/confirm", json={"code": code_at(secret, step)}, headers=auth)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["mfa_enabled"] is True
    assert len(confirmed.json()["recovery_codes"]) == 10
    assert http.get("/auth/me", headers=auth).json()["mfa_enabled"] is True

    again = http.post("/auth/mfa/totp/enroll", headers=auth)
    assert again.status_code == 409
    assert again.json()["error"] == "mfa_enrolled"
    assert http.post("/auth/mfa/totp/confirm", json={"code": code_at(secret, step + 1)},
                     headers=auth).status_code == 400

    # The password alone no longer yields tokens; the new secret completes the login.
    token = mfa_token(server, user, http)
    assert second_step(server, token, code_at(secret, step + 1), http).status_code == 200


def test_admin_can_reset_a_second_factor(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    http = server.client()
    admin = bearer(password_step(server, network.user("admin"), http))
    step = stable_step()
    answer = second_step(server, mfa_token(server, user, http), code_at(user["totp_secret"], step), http)
    assert answer.status_code == 200
    own = bearer(answer.json())
    # Recovery codes are issued on request against a current authenticator code (not a recovery code).
    refused = http.post("/auth/mfa/recovery-codes", json={"code": wrong_code(user["totp_secret"], step)}, headers=own)
    assert refused.status_code == 400
    issued = http.post("/auth/mfa/recovery-codes", json={"code": code_at(user["totp_secret"], step + 1)}, headers=own)
    assert issued.status_code == 200, issued.text
    assert len(issued.json()["recovery_codes"]) == 10
    with server.auth.db.transaction() as db:
        assert len(db.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user["id"])).all()) == 10

    assert http.post(f"/auth/admin/users/{user['id']}/reset-mfa", headers=own).status_code == 403
    reset = http.post(f"/auth/admin/users/{user['id']}/reset-mfa", headers=admin)
    assert reset.status_code == 200, reset.text
    assert reset.json()["id"] == user["id"] and reset.json()["mfa_enabled"] is False

    with server.auth.db.transaction() as db:
        stored = db.get(User, user["id"])
        assert stored is not None
        assert stored.totp_enabled is False and stored.totp_secret_sealed is None
        assert db.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user["id"])).first() is None
    # Sessions opened with the old factor are gone, and the password alone now logs in (MFA is optional here).
    assert http.get("/auth/me", headers=own).status_code == 401
    assert set(password_step(server, user, http)) >= TOKEN_KEYS
    # An unknown user is a 404.
    assert http.post("/auth/admin/users/nobody/reset-mfa", headers=admin).status_code == 404


def test_reset_in_an_mfa_network_sends_the_user_back_to_enrolment(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    user = network.user("physician")
    _, _, admin_tokens = enrol_by_login(server, network.user("admin"))
    reset = server.client().post(f"/auth/admin/users/{user['id']}/reset-mfa", headers=bearer(admin_tokens))
    assert reset.status_code == 200, reset.text
    body = password_step(server, user)
    assert body["mfa_enrollment_required"] is True
    assert not TOKEN_KEYS & set(body)


# Concurrency -------------------------------------------------------------------------------------------------


def race(server: LiveServer, tokens: list[str], code: str) -> list[int]:
    """Send the same code on several challenges at once → the status codes."""
    barrier = threading.Barrier(len(tokens))
    clients = [server.client() for _ in tokens]

    def go(i: int) -> int:
        barrier.wait()
        return second_step(server, tokens[i], code, clients[i]).status_code

    with ThreadPoolExecutor(len(tokens)) as pool:
        return list(pool.map(go, range(len(tokens))))


def test_one_code_sent_concurrently_logs_in_only_once(server: LiveServer) -> None:
    for _ in range(3):
        user = make_network(server).user("physician")
        tokens = [mfa_token(server, user) for _ in range(4)]
        statuses = race(server, tokens, code_at(user["totp_secret"], stable_step()))
        assert sorted(statuses) == [200, 401, 401, 401]


def test_one_recovery_code_sent_concurrently_is_spent_only_once(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    user = network.user("care_manager")
    _, _, tokens = enrol_by_login(server, user)
    for code in tokens["recovery_codes"][:3]:
        statuses = race(server, [mfa_token(server, user) for _ in range(4)], code)
        assert sorted(statuses) == [200, 401, 401, 401]


# At rest and in the log ------------------------------------------------------------------------------------


def _all_rows(server: LiveServer) -> str:
    with server.auth.db.transaction() as db:
        return repr([db.execute(table.select()).all() for table in AuthBase.metadata.sorted_tables])


def _sqlite_bytes(server: LiveServer) -> bytes | None:
    url = server.settings.resolved_auth_database_url
    if not url.startswith("sqlite:///"):
        return None
    return raw_database_bytes(url.removeprefix("sqlite:///"))


def test_totp_secrets_are_encrypted_at_rest(server: LiveServer) -> None:
    network = make_network(server, mfa_required=True)
    enrolled, _, _ = enrol_by_login(server, network.user("care_manager"))
    secrets_ = [network.user("physician")["totp_secret"], network.user("nurse")["totp_secret"], enrolled]

    with server.auth.db.transaction() as db:
        rows = db.execute(text("SELECT * FROM users WHERE network_id = :n"), {"n": network.id}).all()
        sealed = [db.get(User, network.user(r)["id"]).totp_secret_sealed  # type: ignore[union-attr]
                  for r in ("physician", "nurse", "care_manager")]
    assert len(rows) == len(network.users)
    assert all(s is not None and len(s) > 16 for s in sealed)
    dump = repr(rows) + _all_rows(server)
    raw = _sqlite_bytes(server)
    if raw is not None:
        # The scan does see this network's rows: it would see a plaintext secret too.
        assert network.user("physician")["username"].encode() in raw
    for secret in secrets_:
        assert secret not in dump and secret.lower() not in dump
        assert all(secret.encode() not in bytes(s) for s in sealed if s is not None)
        if raw is not None:
            assert secret.encode() not in raw and secret.lower().encode() not in raw


def test_mfa_outcomes_are_audited_without_the_code(server: LiveServer, network: Network) -> None:
    user = network.user("physician")
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    http = server.client(address=address)
    token = mfa_token(server, user, http)
    step = stable_step()
    bad = wrong_code(user["totp_secret"], step)
    good = code_at(user["totp_secret"], step)
    assert second_step(server, token, bad, http).status_code == 401
    assert second_step(server, token, good, http).status_code == 200

    with server.auth.db.transaction() as db:
        events = db.scalars(select(SecurityEvent).where(SecurityEvent.user_id == user["id"])).all()
        kinds = [(e.type, e.outcome) for e in events]
        mfa = [e for e in events if e.type == "mfa"]
        dump = repr([(e.type, e.outcome, e.detail, e.address, e.device_id, e.session_id) for e in events])
    assert ("login_password", "success") in kinds
    assert ("mfa", "failure") in kinds and ("mfa", "success") in kinds
    assert ("login", "success") in kinds
    assert all(e.address == address and e.network_id == network.id for e in mfa)
    success = next(e for e in mfa if e.outcome == "success")
    assert success.detail.get("method") == "totp"
    for secret in (bad, good, token, user["totp_secret"], PASSWORD):
        assert secret not in dump
