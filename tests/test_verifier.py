"""The share service's token verifier, over HTTP against /fhir, and its JWKS cache against the live server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.share.security.jwks import JwksCache, JwksUnavailable
from tests.infra import LiveServer, Network, free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_for(network: Network, **overrides: Any) -> dict[str, Any]:
    user = network.user("care_manager")
    return {"sub": user["id"], "kind": "user", "net": network.id, "org": user["organization"],
            "prof": "care-manager", "scope": "user/*.cruds", "sid": uuid.uuid4().hex, **overrides}


def issue(server: LiveServer, claims: dict[str, Any]) -> str:
    """A token signed by the identity service's real active key; ``claims`` override the registered ones."""
    with server.auth.db.transaction() as db:
        token, _ = server.auth.signer.issue(db, claims)
    return token


def active_public_key(server: LiveServer) -> tuple[str, Any]:
    with server.auth.db.transaction() as db:
        key = server.auth.signer.active_key(db)
        assert key is not None
        return key.kid, ECAlgorithm.from_jwk(json.dumps(key.public_jwk))


def fhir(server: LiveServer, token: str | None = None, *, authorization: str | None = None,
         method: str = "GET", path: str = "/fhir/Patient") -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    return server.client().request(method, path, headers=headers)


def assert_accepted(answer: httpx.Response) -> None:
    # A searchset Bundle means authentication passed (a refused token gets a 401 OperationOutcome).
    assert answer.status_code == 200, answer.text
    assert answer.json()["resourceType"] == "Bundle"


def assert_rejected(answer: httpx.Response, *, error: str | None = "invalid_token") -> None:
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if error is not None:
        assert f'error="{error}"' in challenge
    else:
        assert "error=" not in challenge
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"
    assert answer.headers["content-type"].startswith("application/fhir+json")


# Accepted ------------------------------------------------------------------------------------------------


def test_user_token_from_login_is_accepted(server: LiveServer, network: Network) -> None:
    assert_accepted(fhir(server, network.login("care_manager")["access_token"]))


def test_token_issued_in_process_is_accepted(server: LiveServer, network: Network) -> None:
    # The control for the variants below: the same claims, unaltered, pass.
    assert_accepted(fhir(server, issue(server, claims_for(network))))


# Rejected ------------------------------------------------------------------------------------------------


def _alg_none(server: LiveServer, network: Network) -> str:
    kid, _ = active_public_key(server)
    token = issue(server, claims_for(network))
    payload = token.split(".")[1]
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': kid}).encode())}.{payload}."


def _hs256_with_public_key(server: LiveServer, network: Network) -> str:
    kid, public = active_public_key(server)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = issue(server, claims_for(network)).split(".")[1]
    signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}.{payload}"
    return f"{signing_input}.{b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def _expired(server: LiveServer, network: Network) -> str:
    now = int(time.time())
    return issue(server, claims_for(network, iat=now - 900, nbf=now - 900, exp=now - 300))


def _not_yet_valid(server: LiveServer, network: Network) -> str:
    return issue(server, claims_for(network, nbf=int(time.time()) + 3600))


def _wrong_aud(server: LiveServer, network: Network) -> str:
    return issue(server, claims_for(network, aud="https://elsewhere.example/fhir"))


def _auth_aud(server: LiveServer, network: Network) -> str:
    return issue(server, claims_for(network, aud=server.settings.issuer))


def _wrong_iss(server: LiveServer, network: Network) -> str:
    return issue(server, claims_for(network, iss="https://elsewhere.example/auth"))


def _missing_kind(server: LiveServer, network: Network) -> str:
    claims = claims_for(network)
    del claims["kind"]
    return issue(server, claims)


def _unknown_kid(server: LiveServer, network: Network) -> str:
    now = int(time.time())
    claims = {"iss": server.settings.issuer, "aud": server.settings.fhir_base, "iat": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, **claims_for(network)}
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"kid": uuid.uuid4().hex, "typ": "at+jwt"})


def _unknown_key_under_real_kid(server: LiveServer, network: Network) -> str:
    kid, _ = active_public_key(server)
    now = int(time.time())
    claims = {"iss": server.settings.issuer, "aud": server.settings.fhir_base, "iat": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, **claims_for(network)}
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": kid})


def _tampered_signature(server: LiveServer, network: Network) -> str:
    header, payload, signature = issue(server, claims_for(network)).split(".")
    raw = bytearray(b64url_decode(signature))
    raw[10] ^= 0x01
    return f"{header}.{payload}.{b64url(bytes(raw))}"


def _tampered_payload(server: LiveServer, network: Network) -> str:
    header, payload, signature = issue(server, claims_for(network)).split(".")
    claims = json.loads(b64url_decode(payload))
    claims["org"] = "some-other-organization"
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def _garbage(server: LiveServer, network: Network) -> str:
    return "this-is-not-a-token"


def _three_garbage_parts(server: LiveServer, network: Network) -> str:
    return "aaaa.bbbb.cccc"


REJECTED: dict[str, Callable[[LiveServer, Network], str]] = {
    "alg-none": _alg_none,
    "hs256-public-key-as-secret": _hs256_with_public_key,
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
    "wrong-aud": _wrong_aud,
    "aud-is-the-identity-service": _auth_aud,
    "wrong-iss": _wrong_iss,
    "missing-kind-claim": _missing_kind,
    "unknown-kid": _unknown_kid,
    "unknown-key-under-real-kid": _unknown_key_under_real_kid,
    "tampered-signature": _tampered_signature,
    "tampered-payload": _tampered_payload,
    "garbage": _garbage,
    "three-garbage-parts": _three_garbage_parts,
}


@pytest.mark.parametrize("variant", sorted(REJECTED))
def test_bad_tokens_are_rejected(server: LiveServer, network: Network, variant: str) -> None:
    assert_rejected(fhir(server, REJECTED[variant](server, network)))


def test_missing_authorization_is_a_bearer_challenge(server: LiveServer) -> None:
    assert_rejected(fhir(server), error=None)


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNzd29yZA==", "Token abc", "Bearer", "BearerX abc"])
def test_malformed_authorization_is_rejected(server: LiveServer, authorization: str) -> None:
    assert_rejected(fhir(server, authorization=authorization), error=None)


def test_valid_token_under_another_scheme_is_rejected(server: LiveServer, network: Network) -> None:
    token = issue(server, claims_for(network))
    assert_rejected(fhir(server, authorization=f"Basic {token}"), error=None)


@pytest.mark.parametrize(("method", "path"), [("POST", "/fhir/Patient"), ("DELETE", "/fhir/Patient/1"),
                                              ("GET", "/fhir/"), ("PUT", "/fhir/Observation/x"),
                                              ("GET", "/fhir/metadata/extra")])
def test_every_other_fhir_path_needs_a_token(server: LiveServer, method: str, path: str) -> None:
    assert_rejected(fhir(server, method=method, path=path), error=None)


# Public metadata -----------------------------------------------------------------------------------------


def test_capability_statement_is_public(server: LiveServer) -> None:
    answer = server.client().get("/fhir/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.3.0"
    assert statement["kind"] == "instance"
    oauth = statement["rest"][0]["security"]["extension"][0]["extension"]
    assert {"url": "token", "valueUri": server.settings.token_endpoint} in oauth


def test_smart_configuration_is_public(server: LiveServer) -> None:
    answer = server.client().get("/fhir/.well-known/smart-configuration")
    assert answer.status_code == 200
    config = answer.json()
    assert config["token_endpoint"] == server.settings.token_endpoint
    assert config["issuer"] == server.settings.issuer
    assert config["jwks_uri"] == server.settings.jwks_url
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"ES384", "RS384"}
    assert "client_credentials" in config["grant_types_supported"]
    # The advertised endpoints are the ones that work.
    http = server.client()
    assert http.get(config["jwks_uri"]).json()["keys"]
    assert http.post(config["token_endpoint"], data={"grant_type": "nope"}).json()["error"] == \
        "unsupported_grant_type"


# Key rotation --------------------------------------------------------------------------------------------


def test_key_rotation_keeps_old_tokens_and_accepts_new_ones(server: LiveServer, network: Network) -> None:
    old_token = issue(server, claims_for(network))
    assert_accepted(fhir(server, old_token))
    with server.auth.db.transaction() as db:
        old_key = server.auth.signer.active_key(db)
        assert old_key is not None
        old_kid = old_key.kid
        new_kid = server.auth.signer.rotate(db).kid
    assert new_kid != old_kid

    new_token = issue(server, claims_for(network))
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid
    published = {k["kid"] for k in server.client().get("/auth/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= published

    # Unknown-kid refetches are rate-limited; once the interval has passed, the new key is fetched on demand.
    time.sleep(server.settings.jwks_min_refresh_seconds + 0.2)
    assert_accepted(fhir(server, new_token))
    assert_accepted(fhir(server, old_token))
    # Logins now sign with the new key, and the share service takes those tokens too.
    login_token = network.login("care_manager")["access_token"]
    assert jwt.get_unverified_header(login_token)["kid"] == new_kid
    assert_accepted(fhir(server, login_token))


# The JWKS cache, directly --------------------------------------------------------------------------------


class CountingCache(JwksCache):
    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1
        await super().refresh()


def published_kids(server: LiveServer) -> list[str]:
    return [k["kid"] for k in server.client().get("/auth/jwks.json").json()["keys"]]


def test_jwks_flood_of_unknown_kids_causes_no_refetch_within_the_interval(server: LiveServer) -> None:
    known = published_kids(server)[0]

    async def scenario() -> None:
        cache = CountingCache(server.settings.jwks_url, min_refresh_seconds=60)
        try:
            assert await cache.key(known) is not None
            assert cache.refreshes == 1
            forged = await asyncio.gather(*(cache.key(f"forged-{uuid.uuid4().hex}") for _ in range(100)))
            assert forged == [None] * 100
            for _ in range(50):
                assert await cache.key(uuid.uuid4().hex) is None
            assert cache.refreshes == 1
            assert await cache.key(known) is not None
            assert cache.refreshes == 1
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_jwks_flood_after_the_interval_causes_exactly_one_refetch(server: LiveServer) -> None:
    known = published_kids(server)[0]

    async def scenario() -> None:
        cache = CountingCache(server.settings.jwks_url, min_refresh_seconds=0.3)
        try:
            # Cold cache, concurrent callers: one fetch, not one per caller.
            cold = await asyncio.gather(*(cache.key(f"forged-{i}") for i in range(50)), cache.key(known))
            assert cold[-1] is not None and cold[:-1] == [None] * 50
            assert cache.refreshes == 1
            await asyncio.sleep(0.4)
            forged = await asyncio.gather(*(cache.key(f"forged-{uuid.uuid4().hex}") for _ in range(100)))
            assert forged == [None] * 100
            assert cache.refreshes == 2
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_jwks_unreachable_with_nothing_cached_is_an_error() -> None:
    async def scenario() -> None:
        cache = JwksCache(f"http://127.0.0.1:{free_port()}/auth/jwks.json", min_refresh_seconds=0)
        try:
            with pytest.raises(JwksUnavailable):
                await cache.key("anything")
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_jwks_unreachable_later_keeps_the_cached_keys(server: LiveServer) -> None:
    known = published_kids(server)[0]

    async def scenario() -> None:
        cache = CountingCache(server.settings.jwks_url, min_refresh_seconds=0)
        try:
            assert await cache.key(known) is not None
            cache.url = f"http://127.0.0.1:{free_port()}/auth/jwks.json"
            assert await cache.key("unknown-kid") is None  # refetch attempted, failed, cache kept
            assert cache.refreshes == 2
            assert await cache.key(known) is not None
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_jwks_failed_refetches_are_rate_limited_too(server: LiveServer) -> None:
    """While the identity service is down, a flood of forged kids must not become a flood of fetch attempts (each
    one serialised behind the cache's lock, each up to the fetch timeout), and known keys keep working."""
    known = published_kids(server)[0]

    async def scenario() -> None:
        cache = CountingCache(server.settings.jwks_url, min_refresh_seconds=0.5, max_age_seconds=0.5)
        try:
            assert await cache.key(known) is not None
            cache.url = f"http://127.0.0.1:{free_port()}/auth/jwks.json"
            await asyncio.sleep(0.6)  # past both the refetch interval and the maximum age
            forged = [await cache.key(f"forged-{uuid.uuid4().hex}") for _ in range(30)]
            assert forged == [None] * 30
            assert all([await cache.key(known) is not None for _ in range(30)])
            assert cache.refreshes == 2  # the first fetch, then one failed attempt
            # Once the interval has passed, the next unknown kid is worth another attempt.
            await asyncio.sleep(0.6)
            assert await cache.key(f"forged-{uuid.uuid4().hex}") is None
            assert cache.refreshes == 3
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_jwks_unreachable_from_the_start_is_not_retried_per_request() -> None:
    async def scenario() -> None:
        cache = CountingCache(f"http://127.0.0.1:{free_port()}/auth/jwks.json", min_refresh_seconds=60)
        try:
            for _ in range(20):
                with pytest.raises(JwksUnavailable):
                    await cache.key("anything")
            assert cache.refreshes == 1
        finally:
            await cache.close()

    asyncio.run(scenario())


# Remembered verifications ---------------------------------------------------------------------------------


class CountingVerifier:
    """The real verifier, counting full signature checks."""

    def __init__(self, server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
        from services.share.security import verifier as module

        self.checks = 0
        real = module.tokens.verify

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.checks += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module.tokens, "verify", counted)
        self.verifier = module.TokenVerifier(server.settings)

    def authenticate(self, token: str) -> Any:
        async def call() -> Any:
            try:
                return await self.verifier.authenticate(f"Bearer {token}")
            finally:
                await self.verifier.jwks.close()

        return asyncio.run(call())


def test_a_verified_token_is_not_checked_again(server: LiveServer, network: Network,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingVerifier(server, monkeypatch)
    token = issue(server, claims_for(network))
    first, second = counting.authenticate(token), counting.authenticate(token)
    assert first.subject == second.subject == network.user("care_manager")["id"]
    assert counting.checks == 1
    counting.authenticate(issue(server, claims_for(network)))  # another token is checked in full
    assert counting.checks == 2


def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(server: LiveServer, network: Network,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from services.kit.tokens import InvalidToken

    counting = CountingVerifier(server, monkeypatch)
    token = issue(server, claims_for(network))
    counting.authenticate(token)
    # The identity service's JWKS no longer publishes the key (fetched just now, so no refetch is due).
    counting.verifier.jwks._keys = {"a-newer-key": ec.generate_private_key(ec.SECP256R1()).public_key()}
    counting.verifier.jwks._fetched_at = counting.verifier.jwks._attempted_at = time.monotonic()
    with pytest.raises(InvalidToken):
        counting.authenticate(token)


def test_a_remembered_token_is_checked_in_full_after_it_expires(server: LiveServer, network: Network,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingVerifier(server, monkeypatch)
    expires = int(time.time()) + 3
    token = issue(server, claims_for(network, exp=expires))
    counting.authenticate(token)
    counting.authenticate(token)
    assert counting.checks == 1
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    # Past its expiry nothing is taken from memory: the full check applies (with its clock-skew leeway).
    counting.authenticate(token)
    assert counting.checks == 2
