"""Login throttling: free failures, exponential back-off with caps (no one is locked out for good), quiet-window
reset, success clearing the account counters, and over HTTP: 429 + Retry-After, other addresses, no enumeration."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest

from services.auth.credentials.models import ThrottleCounter
from services.auth.credentials.throttle import LoginThrottle
from services.kit.errors import TooManyRequests
from services.kit.settings import Settings
from tests.infra import PASSWORD, LiveServer, Network

# Explicit clocks: far from the real one, and every test uses its own usernames and addresses.
T0 = datetime(2031, 4, 1, 9, 0, tzinfo=UTC)


def unique(label: str = "unit") -> tuple[str, str]:
    tag = uuid.uuid4().hex[:12]
    return f"{label}-user-{tag}", f"{label}-addr-{tag}"


def unique_address() -> str:
    raw = uuid.uuid4().int
    return f"203.0.{raw % 256}.{(raw >> 8) % 254 + 1}"


class Harness:
    """A LoginThrottle driven at explicit times, each call in its own transaction on the server's database."""

    def __init__(self, server: LiveServer, settings: Settings | None = None) -> None:
        self.server = server
        self.settings = settings or server.settings
        self.throttle = LoginThrottle(self.settings)

    def fail(self, username: str, address: str, now: datetime) -> None:
        with self.server.auth.db.transaction() as db:
            self.throttle.record_failure(db, username, address, now)

    def succeed(self, username: str, address: str) -> None:
        with self.server.auth.db.transaction() as db:
            self.throttle.record_success(db, username, address)

    def retry_after(self, username: str, address: str, now: datetime) -> int | None:
        """None if the attempt may go ahead, else the seconds to wait."""
        try:
            with self.server.auth.db.transaction() as db:
                self.throttle.check(db, username, address, now)
        except TooManyRequests as refused:
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) == max(1, refused.retry_after)
            return refused.retry_after
        return None

    def counter(self, kind: str, username: str, address: str) -> ThrottleCounter | None:
        key = LoginThrottle.keys(username, address)[kind]
        with self.server.auth.db.transaction() as db:
            return db.get(ThrottleCounter, key)

    def lock(self, kind: str, username: str, address: str, now: datetime) -> float:
        """Seconds the counter of ``kind`` stays locked after ``now`` (0 when not locked)."""
        counter = self.counter(kind, username, address)
        if counter is None or counter.locked_until is None or counter.locked_until <= now:
            return 0.0
        return (counter.locked_until - now).total_seconds()


@pytest.fixture
def harness(server: LiveServer) -> Harness:
    return Harness(server)


# Unit tests of the policy -----------------------------------------------------------------------------------


def test_settings_are_the_documented_defaults(server: LiveServer) -> None:
    s = server.settings
    assert (s.throttle_account_ip_free, s.throttle_account_free, s.throttle_ip_free) == (5, 20, 50)
    assert (s.throttle_max_lock_seconds, s.throttle_account_max_lock_seconds) == (900, 60)
    assert s.throttle_window_seconds == 24 * 3600


def test_pair_failures_are_free_then_back_off_exponentially_up_to_the_cap(harness: Harness) -> None:
    username, address = unique()
    free = harness.settings.throttle_account_ip_free
    cap = harness.settings.throttle_max_lock_seconds
    now = T0
    for _ in range(free):
        assert harness.retry_after(username, address, now) is None
        harness.fail(username, address, now)
    assert harness.retry_after(username, address, now) is None

    # Each further failure, made as soon as the previous lock expires, doubles the lock until the cap.
    expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, cap, cap]
    for seconds in expected:
        assert harness.retry_after(username, address, now) is None  # the previous lock has just expired
        harness.fail(username, address, now)
        assert harness.lock("acct-ip", username, address, now) == seconds
        assert harness.retry_after(username, address, now) == seconds
        assert harness.retry_after(username, address, now + timedelta(seconds=seconds - 0.5)) == 1
        now += timedelta(seconds=seconds)
    counter = harness.counter("acct-ip", username, address)
    assert counter is not None and counter.failures == free + len(expected)

    # However many more failures pile up, the lock never exceeds the cap: nobody is locked out for good.
    for _ in range(40):
        harness.fail(username, address, now)
    assert harness.lock("acct-ip", username, address, now) == cap
    assert harness.retry_after(username, address, now) == cap
    assert harness.retry_after(username, address, now + timedelta(seconds=cap)) is None


def test_account_lock_starts_after_its_free_failures_and_is_capped_at_a_minute(harness: Harness) -> None:
    username, _ = unique()
    free = harness.settings.throttle_account_free
    cap = harness.settings.throttle_account_max_lock_seconds
    assert cap == 60
    now = T0
    # Failures from ever-new addresses: only the account-wide counter sees them all.
    for _ in range(free):
        harness.fail(username, unique_address(), now)
    assert harness.retry_after(username, unique_address(), now) is None

    for seconds in [1, 2, 4, 8, 16, 32, 60, 60]:
        harness.fail(username, unique_address(), now)
        assert harness.lock("acct", username, "", now) == seconds
        # The lock holds for this account from any address...
        assert harness.retry_after(username, unique_address(), now) == seconds
    # ...but not for other accounts from the same addresses.
    assert harness.retry_after(unique()[0], unique_address(), now) is None

    for _ in range(100):
        harness.fail(username, unique_address(), now)
    assert harness.lock("acct", username, "", now) == cap
    assert harness.retry_after(username, unique_address(), now + timedelta(seconds=cap - 1)) == 1
    assert harness.retry_after(username, unique_address(), now + timedelta(seconds=cap)) is None


def test_address_lock_covers_every_username_from_that_address(harness: Harness) -> None:
    _, address = unique()
    free = harness.settings.throttle_ip_free
    cap = harness.settings.throttle_max_lock_seconds
    now = T0
    # One failure each for many usernames: neither the pair nor the account counters ever lock.
    for _ in range(free):
        harness.fail(unique()[0], address, now)
    assert harness.retry_after(unique()[0], address, now) is None

    harness.fail(unique()[0], address, now)
    assert harness.lock("ip", "", address, now) == 1
    assert harness.retry_after(unique()[0], address, now) == 1
    assert harness.retry_after(unique()[0], unique_address(), now) is None  # other addresses are unaffected
    harness.fail(unique()[0], address, now)
    assert harness.lock("ip", "", address, now) == 2

    for _ in range(60):
        harness.fail(unique()[0], address, now)
    assert harness.lock("ip", "", address, now) == cap
    assert harness.retry_after(unique()[0], address, now + timedelta(seconds=cap)) is None


def test_counts_reset_after_a_quiet_window(harness: Harness) -> None:
    window = timedelta(seconds=harness.settings.throttle_window_seconds)
    free = harness.settings.throttle_account_ip_free

    quiet_user, quiet_address = unique()
    busy_user, busy_address = unique()
    for name, address in ((quiet_user, quiet_address), (busy_user, busy_address)):
        for _ in range(free):
            harness.fail(name, address, T0)

    # Inside the window the next failure locks; after a quiet window it is the first of a new count.
    harness.fail(busy_user, busy_address, T0 + window - timedelta(seconds=1))
    assert harness.retry_after(busy_user, busy_address, T0 + window - timedelta(seconds=1)) == 1

    later = T0 + window + timedelta(seconds=1)
    harness.fail(quiet_user, quiet_address, later)
    assert harness.retry_after(quiet_user, quiet_address, later) is None
    for kind in ("acct-ip", "acct", "ip"):
        counter = harness.counter(kind, quiet_user, quiet_address)
        assert counter is not None and counter.failures == 1
    # And the free allowance is whole again.
    for _ in range(free - 1):
        harness.fail(quiet_user, quiet_address, later)
    assert harness.retry_after(quiet_user, quiet_address, later) is None
    harness.fail(quiet_user, quiet_address, later)
    assert harness.retry_after(quiet_user, quiet_address, later) == 1


def test_success_clears_the_account_counters_but_not_the_address_counter(harness: Harness) -> None:
    username, address = unique()
    free = harness.settings.throttle_account_ip_free
    for _ in range(free):
        harness.fail(username, address, T0)
    harness.succeed(username, address)
    assert harness.counter("acct-ip", username, address) is None
    assert harness.counter("acct", username, address) is None
    ip = harness.counter("ip", username, address)
    assert ip is not None and ip.failures == free

    harness.fail(username, address, T0)
    assert harness.retry_after(username, address, T0) is None  # the pair's free allowance starts over
    ip = harness.counter("ip", username, address)
    assert ip is not None and ip.failures == free + 1


def test_usernames_are_counted_case_and_space_insensitively(harness: Harness) -> None:
    username, address = unique()
    free = harness.settings.throttle_account_ip_free
    for variant in [username.upper(), f" {username}", username.title(), username, f"{username}  ", username]:
        harness.fail(variant, address, T0)
    assert free == 5
    assert harness.retry_after(username, address, T0) == 1
    assert harness.retry_after(username.upper(), address, T0) == 1


def test_the_policy_follows_the_settings(server: LiveServer) -> None:
    settings = server.settings.model_copy(update={
        "throttle_account_ip_free": 2, "throttle_max_lock_seconds": 3, "throttle_window_seconds": 10})
    harness = Harness(server, settings)
    username, address = unique()
    harness.fail(username, address, T0)
    harness.fail(username, address, T0)
    assert harness.retry_after(username, address, T0) is None
    for seconds in (1, 2, 3, 3):
        harness.fail(username, address, T0)
        assert harness.retry_after(username, address, T0) == seconds
    harness.fail(username, address, T0 + timedelta(seconds=11))
    assert harness.retry_after(username, address, T0 + timedelta(seconds=11)) is None


# Over HTTP ---------------------------------------------------------------------------------------------------


def attempt(http: httpx.Client, username: str, password: str) -> httpx.Response:
    return http.post("/auth/login", json={"username": username, "password": password})


def retry_after_header(answer: httpx.Response) -> int:
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"] == "too_many_requests"
    assert not {"access_token", "refresh_token", "mfa_token"} & set(answer.json())
    value = answer.headers["Retry-After"]
    assert value.isdigit(), value
    seconds = int(value)
    assert seconds >= 1
    return seconds


def test_six_failures_from_one_address_lock_that_pair_even_for_the_right_password(
    server: LiveServer, network: Network
) -> None:
    username = network.user("care_manager")["username"]
    http = server.client(address=unique_address())
    for _ in range(6):
        answer = attempt(http, username, "not the password")
        assert answer.status_code == 401
        assert answer.json()["error"] == "invalid_credentials"
    locked = attempt(http, username, PASSWORD)
    wait = retry_after_header(locked)
    assert wait <= 2  # the first lock beyond the free allowance is one second

    # Another address still gets in to the same account: the account-wide lock needs 20 failures.
    elsewhere = attempt(server.client(address=unique_address()), username, PASSWORD)
    assert elsewhere.status_code == 200, elsewhere.text
    assert "access_token" in elsewhere.json()

    time.sleep(wait + 0.2)
    answer = attempt(http, username, PASSWORD)
    assert answer.status_code == 200, answer.text
    assert "access_token" in answer.json()
    # That success cleared the pair's count: one more failure is free again.
    assert attempt(http, username, "not the password").status_code == 401
    assert attempt(http, username, PASSWORD).status_code == 200


def test_unknown_username_is_throttled_exactly_like_a_known_one(server: LiveServer, network: Network) -> None:
    known = network.user("care_manager")["username"]
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    known_http = server.client(address=unique_address())
    unknown_http = server.client(address=unique_address())

    def story(http: httpx.Client, username: str) -> list[tuple[int, Any, str | None]]:
        answers = [attempt(http, username, "not the password") for _ in range(7)]
        return [(a.status_code, a.json(), a.headers.get("Retry-After")) for a in answers]

    known_story = story(known_http, known)
    unknown_story = story(unknown_http, unknown)
    assert [s[0] for s in known_story] == [401] * 6 + [429]
    assert known_story == unknown_story


def test_the_account_wide_lock_starts_after_twenty_failures(server: LiveServer, network: Network) -> None:
    username = network.user("care_manager")["username"]
    free = server.settings.throttle_account_free
    # Four failures per address, so no address-and-account pair ever locks; only the account count grows.
    addresses = [unique_address() for _ in range(free // 4)]
    for address in addresses:
        http = server.client(address=address)
        for _ in range(4):
            assert attempt(http, username, "not the password").status_code == 401
    # Twenty failures are free for the account as a whole: the 21st is still answered (and counted)...
    assert attempt(server.client(address=unique_address()), username, "not the password").status_code == 401
    # ...and it locks the account for a second, from every address, right password or not.
    locked = attempt(server.client(address=unique_address()), username, PASSWORD)
    wait = retry_after_header(locked)
    assert wait <= 2
    time.sleep(wait + 0.2)
    answer = attempt(server.client(address=addresses[0]), username, PASSWORD)
    assert answer.status_code == 200, answer.text


def test_wrong_codes_count_and_a_right_password_does_not_wipe_them(server: LiveServer, network: Network) -> None:
    """Holding the password must not buy unlimited second-factor guesses: each login gives 5 tries per
    challenge, but the failures keep counting across logins until a login actually completes."""
    user = network.user("physician")
    secret = user["totp_secret"]
    http = server.client(address=unique_address())
    step = int(time.time() // 30)
    window = {str(pyotp.TOTP(secret).generate_otp(s)) for s in range(step - 3, step + 4)}
    wrong = next(c for c in (f"{n:06d}" for n in range(0, 1_000_000, 7919)) if c not in window)

    def challenge() -> str:
        answer = attempt(http, user["username"], PASSWORD)
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["mfa_token"]
        return token

    first = challenge()
    for _ in range(5):
        answer = http.post("/auth/login/mfa", json={"mfa_token": first, "code": wrong})
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_code"
    second = challenge()  # the password is right; the five failed codes still count
    answer = http.post("/auth/login/mfa", json={"mfa_token": second, "code": wrong})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_code"
    right = str(pyotp.TOTP(secret).generate_otp(int(time.time() // 30)))
    locked = http.post("/auth/login/mfa", json={"mfa_token": second, "code": right})
    wait = retry_after_header(locked)
    retry_after_header(attempt(http, user["username"], PASSWORD))

    time.sleep(wait + 0.2)
    right = str(pyotp.TOTP(secret).generate_otp(int(time.time() // 30)))
    answer = http.post("/auth/login/mfa", json={"mfa_token": second, "code": right})
    assert answer.status_code == 200, answer.text
    # A completed login clears the count.
    assert attempt(http, user["username"], "not the password").status_code == 401
    assert attempt(http, user["username"], PASSWORD).status_code == 200
