"""SMART Backend Services: client_credentials with a private_key_jwt assertion, and the scope intersection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import select

from services.auth.audit.models import SecurityEvent
from services.kit import scopes
from tests.infra import LiveServer, Network, make_network

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REGISTERED_SCOPE = "system/Patient.rs system/QuestionnaireResponse.cruds"


@dataclass
class ClientKey:
    """A system client's key pair, as a hospital EHR would hold it."""

    alg: str
    kid: str
    private: Any

    @classmethod
    def generate(cls, alg: str = "ES384", kid: str | None = None) -> ClientKey:
        if alg == "ES384":
            private: Any = ec.generate_private_key(ec.SECP384R1())
        elif alg == "RS384":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(alg)
        return cls(alg=alg, kid=kid or uuid.uuid4().hex[:12], private=private)

    def public_jwk(self) -> dict[str, Any]:
        to_jwk = ECAlgorithm.to_jwk if self.alg == "ES384" else RSAAlgorithm.to_jwk
        jwk: dict[str, Any] = dict(to_jwk(self.private.public_key(), as_dict=True))
        jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


@dataclass
class SystemClient:
    server: LiveServer
    network: Network
    client_id: str
    key: ClientKey

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Assertion claims per SMART Backend Services; an override of None removes the claim."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.client_id, "sub": self.client_id,
                                  "aud": self.server.settings.token_endpoint, "iat": now, "exp": now + 240,
                                  "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def assertion(self, **overrides: Any) -> str:
        return self.key.sign(self.claims(**overrides))

    def token(self, assertion: str | None = None, scope: str | None = None) -> httpx.Response:
        return request_token(self.server, self.assertion() if assertion is None else assertion, scope=scope)


def request_token(server: LiveServer, assertion: str | None, *, scope: str | None = None,
                  grant_type: str = "client_credentials",
                  assertion_type: str | None = ASSERTION_TYPE) -> httpx.Response:
    form = {"grant_type": grant_type, "client_assertion_type": assertion_type, "client_assertion": assertion,
            "scope": scope}
    return server.client().post("/auth/token", data={k: v for k, v in form.items() if v is not None})


def register(server: LiveServer, alg: str = "ES384", scope: str = REGISTERED_SCOPE) -> SystemClient:
    key = ClientKey.generate(alg)
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    network = make_network(server, clients=[{"client_id": client_id, "organization": "hospital",
                                             "jwks": {"keys": [key.public_jwk()]}, "scope": scope}])
    return SystemClient(server=server, network=network, client_id=client_id, key=key)


@pytest.fixture
def client(server: LiveServer) -> SystemClient:
    return register(server)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A JWT built by hand: PyJWT refuses to make the forgeries (alg none, public key as HMAC secret)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def assert_invalid_client(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_client"
    assert "access_token" not in answer.json()


# Happy paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_client_gets_a_system_token(server: LiveServer, alg: str) -> None:
    client = register(server, alg)
    answer = client.token()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == server.settings.access_token_ttl_seconds
    assert scopes.split(body["scope"]) == scopes.split(REGISTERED_SCOPE)
    assert answer.headers["cache-control"] == "no-store"
    assert "refresh_token" not in body


def test_system_token_claims_verify_against_the_published_keys(server: LiveServer, client: SystemClient) -> None:
    answer = client.token()
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    header = jwt.get_unverified_header(token)
    published = {k["kid"]: k for k in server.client().get("/auth/jwks.json").json()["keys"]}
    assert header["alg"] == "ES256" and header["kid"] in published
    claims = jwt.decode(token, jwt.PyJWK(published[header["kid"]]).key, algorithms=["ES256"],
                        audience=server.settings.fhir_base, issuer=server.settings.issuer)
    assert claims["sub"] == client.client_id
    assert claims["client_id"] == client.client_id
    assert claims["kind"] == "system"
    assert claims["net"] == client.network.id
    assert claims["org"] == client.network.orgs["hospital"]
    assert claims["scope"] == answer.json()["scope"]
    assert "prof" not in claims and "sid" not in claims
    assert claims["exp"] - claims["iat"] == server.settings.access_token_ttl_seconds


def test_system_token_is_accepted_by_the_share_service(server: LiveServer, client: SystemClient) -> None:
    token = client.token().json()["access_token"]
    http = server.client()
    assert http.get("/fhir/Patient").status_code == 401
    answer = http.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["resourceType"] == "Bundle"


def test_assertion_expiring_within_five_minutes_is_accepted(client: SystemClient) -> None:
    answer = client.token(client.assertion(exp=int(time.time()) + 290))
    assert answer.status_code == 200, answer.text


def test_assertion_without_kid_is_matched_against_the_registered_keys(client: SystemClient) -> None:
    assertion = jwt.encode(client.claims(), client.key.private, algorithm="ES384")
    assert "kid" not in jwt.get_unverified_header(assertion)
    assert client.token(assertion).status_code == 200


# Scopes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "granted"), [
    ("system/Patient.rs system/Observation.rs", "system/Patient.rs"),
    ("system/QuestionnaireResponse.r", "system/QuestionnaireResponse.r"),
    ("system/Patient.read", "system/Patient.rs"),
    ("system/*.rs", "system/Patient.rs system/QuestionnaireResponse.rs"),
    (None, REGISTERED_SCOPE),
])
def test_granted_scope_is_the_intersection(client: SystemClient, requested: str | None, granted: str) -> None:
    answer = client.token(scope=requested)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == granted
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert claims["scope"] == granted


@pytest.mark.parametrize("requested", ["system/Observation.rs", "user/Patient.rs", "patient/*.cruds", "admin"])
def test_only_unregistered_scopes_is_invalid_scope(client: SystemClient, requested: str) -> None:
    answer = client.token(scope=requested)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_scope"
    assert "access_token" not in answer.json()


# Refused assertions ----------------------------------------------------------------------------------------


def test_replayed_assertion_is_refused_and_audited(server: LiveServer, client: SystemClient) -> None:
    assertion = client.assertion()
    assert client.token(assertion).status_code == 200
    assert_invalid_client(client.token(assertion))
    # A fresh jti from the same client still works: the refusal was about the replay only.
    assert client.token().status_code == 200
    with server.auth.db.transaction() as db:
        events = db.scalars(select(SecurityEvent).where(SecurityEvent.client_id == client.client_id,
                                                        SecurityEvent.type == "client_token")).all()
        outcomes = sorted((e.outcome, e.detail.get("reason")) for e in events)
    assert outcomes == [("failure", "jti_replayed"), ("success", None), ("success", None)]
    assert assertion not in repr([e.detail for e in events])


REFUSED_CLAIMS: dict[str, Any] = {
    "wrong-aud": lambda c: {"aud": f"{c.server.base_url}/other/token"},
    "aud-is-the-fhir-base": lambda c: {"aud": c.server.settings.fhir_base},
    "exp-ten-minutes-ahead": lambda c: {"exp": int(time.time()) + 600},
    "exp-a-day-ahead": lambda c: {"exp": int(time.time()) + 86400},
    "expired": lambda c: {"iat": int(time.time()) - 600, "exp": int(time.time()) - 120},
    "missing-exp": lambda c: {"exp": None},
    "missing-jti": lambda c: {"jti": None},
    "missing-aud": lambda c: {"aud": None},
    "missing-sub": lambda c: {"sub": None},
    "sub-differs-from-iss": lambda c: {"sub": f"{c.client_id}-other"},
}


@pytest.mark.parametrize("variant", sorted(REFUSED_CLAIMS))
def test_bad_assertion_claims_are_refused(client: SystemClient, variant: str) -> None:
    assert_invalid_client(client.token(client.assertion(**REFUSED_CLAIMS[variant](client))))


def test_unknown_client_is_refused(server: LiveServer, client: SystemClient) -> None:
    stranger = f"nobody-{uuid.uuid4().hex[:8]}"
    assert_invalid_client(client.token(client.assertion(iss=stranger, sub=stranger)))


def test_disabled_client_is_refused(server: LiveServer, client: SystemClient) -> None:
    assert client.token().status_code == 200
    answer = server.client().delete(f"/auth/admin/clients/{client.client_id}",
                                    headers=client.network.bearer("admin"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["disabled"] is True
    assert_invalid_client(client.token())


def test_disabling_needs_an_administrator(server: LiveServer, client: SystemClient) -> None:
    answer = server.client().delete(f"/auth/admin/clients/{client.client_id}",
                                    headers=client.network.bearer("care_manager"))
    assert answer.status_code == 403
    assert client.token().status_code == 200


@pytest.mark.parametrize("same_kid", [True, False])
def test_assertion_signed_by_an_unregistered_key_is_refused(client: SystemClient, same_kid: bool) -> None:
    intruder = ClientKey.generate("ES384", kid=client.key.kid if same_kid else None)
    assert_invalid_client(client.token(intruder.sign(client.claims())))


def test_assertion_with_mismatched_algorithm_is_refused(client: SystemClient) -> None:
    # ES384 key registered; an RS384 assertion under the same kid must not be verified with some other key.
    intruder = ClientKey.generate("RS384", kid=client.key.kid)
    assert_invalid_client(client.token(intruder.sign(client.claims())))


def test_hs256_with_the_public_key_as_secret_is_refused(client: SystemClient) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": client.key.kid}
    forged = unsigned_jwt(header, client.claims(), secret=client.key.public_pem())
    assert_invalid_client(client.token(forged))


def test_alg_none_is_refused(client: SystemClient) -> None:
    forged = unsigned_jwt({"alg": "none", "typ": "JWT", "kid": client.key.kid}, client.claims())
    assert_invalid_client(client.token(forged))


def test_tampered_assertion_is_refused(client: SystemClient) -> None:
    header, _, signature = client.assertion().split(".")
    payload = b64url(json.dumps(client.claims()).encode())  # another jti, same signature
    assert_invalid_client(client.token(f"{header}.{payload}.{signature}"))


@pytest.mark.parametrize("assertion_type", [None, "urn:ietf:params:oauth:client-assertion-type:saml2-bearer", ""])
def test_wrong_client_assertion_type_is_refused(server: LiveServer, client: SystemClient,
                                                assertion_type: str | None) -> None:
    assert_invalid_client(request_token(server, client.assertion(), assertion_type=assertion_type))


@pytest.mark.parametrize("assertion", [None, "", "not-a-jwt"])
def test_missing_or_garbage_assertion_is_refused(server: LiveServer, assertion: str | None) -> None:
    assert_invalid_client(request_token(server, assertion))


@pytest.mark.parametrize("grant_type", ["password", "authorization_code",
                                        "urn:ietf:params:oauth:grant-type:jwt-bearer"])
def test_unsupported_grant_type(server: LiveServer, client: SystemClient, grant_type: str) -> None:
    answer = request_token(server, client.assertion(), grant_type=grant_type)
    assert answer.status_code == 400
    assert answer.json()["error"] == "unsupported_grant_type"


def test_missing_grant_type_is_a_400(server: LiveServer) -> None:
    answer = server.client().post("/auth/token", data={"client_assertion_type": ASSERTION_TYPE})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


# Registration ----------------------------------------------------------------------------------------------


def put_client(network: Network, client_id: str, jwks: dict[str, Any],
               scope: str = "system/Patient.rs") -> httpx.Response:
    body = {"client_id": client_id, "organization": network.orgs["hospital"], "jwks": jwks, "scope": scope}
    return network.server.client().put(f"/auth/admin/clients/{client_id}", json=body,
                                       headers=network.bearer("admin"))


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_admin_registers_a_public_key_and_the_client_can_use_it(server: LiveServer, network: Network,
                                                               alg: str) -> None:
    key = ClientKey.generate(alg)
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    answer = put_client(network, client_id, {"keys": [key.public_jwk()]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"client_id": client_id, "organization": network.orgs["hospital"],
                             "scope": "system/Patient.rs", "disabled": False, "kids": [key.kid]}
    client = SystemClient(server=server, network=network, client_id=client_id, key=key)
    answer = client.token()
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "system/Patient.rs"


def _private_ec_jwk() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP384R1())
    return {**json.loads(ECAlgorithm.to_jwk(private)), "kid": "leaked"}


def _private_rsa_jwk() -> dict[str, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**json.loads(RSAAlgorithm.to_jwk(private)), "kid": "leaked"}


def _p256_jwk() -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True), "kid": "p256"}


def _small_rsa_jwk() -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": "rsa1024"}


def _hmac_jwk() -> dict[str, Any]:
    return {"kty": "oct", "k": b64url(b"a shared secret that is not a key pair"), "kid": "oct"}


def _wrong_alg_jwk() -> dict[str, Any]:
    return {**ClientKey.generate("ES384").public_jwk(), "alg": "ES256"}


# variant: (key factory, what the refusal must name)
REFUSED_KEYS = {
    "private-ec": (_private_ec_jwk, "private key"),
    "private-rsa": (_private_rsa_jwk, "private key"),
    "p256": (_p256_jwk, "P-384"),
    "rsa-1024": (_small_rsa_jwk, "2048"),
    "symmetric": (_hmac_jwk, "only EC P-384 and RSA"),
    "alg-es256": (_wrong_alg_jwk, "alg"),
}


@pytest.mark.parametrize("variant", sorted(REFUSED_KEYS))
def test_registration_refuses_unsuitable_keys(server: LiveServer, network: Network, variant: str) -> None:
    make_key, reason = REFUSED_KEYS[variant]
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    answer = put_client(network, client_id, {"keys": [make_key()]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert reason in answer.json()["error_description"]
    listed = server.client().get("/auth/admin/clients", headers=network.bearer("admin"))
    assert client_id not in {c["client_id"] for c in listed.json()}


def test_registration_refuses_an_empty_key_set(network: Network) -> None:
    assert put_client(network, f"ehr-{uuid.uuid4().hex[:8]}", {"keys": []}).status_code == 400


def test_registration_refuses_a_private_key_next_to_a_good_one(network: Network) -> None:
    jwks = {"keys": [ClientKey.generate("ES384").public_jwk(), _private_ec_jwk()]}
    assert put_client(network, f"ehr-{uuid.uuid4().hex[:8]}", jwks).status_code == 400


# The scope intersection, as properties -----------------------------------------------------------------------

_CONTEXTS = st.sampled_from(["patient", "user", "system"])
_RESOURCES = st.sampled_from(["*", "Patient", "Observation", "QuestionnaireResponse"])
_V2 = [p for p in ("".join(c for c, bit in zip("cruds", f"{n:05b}", strict=True) if bit == "1")
                   for n in range(1, 32))]
_PERMISSIONS = st.one_of(st.sampled_from(_V2), st.sampled_from(["read", "write", "*"]),
                         st.sampled_from(["sr", "rr", "x", "readwrite", "R"]))
_SMART = st.builds(lambda c, r, p: f"{c}/{r}.{p}", _CONTEXTS, _RESOURCES, _PERMISSIONS)
_SCOPE = st.one_of(_SMART, _SMART.map(lambda s: s + "?category=laboratory"),
                   st.sampled_from(["openid", "fhirUser", "admin", "launch/patient", "offline_access"]))
_SCOPES = st.lists(_SCOPE, max_size=8)


def _covers(holder: str, granted: scopes.SmartScope) -> bool:
    parsed = scopes.parse_smart(holder)
    return parsed is not None and all(parsed.covers(granted.context, granted.resource, p)
                                      for p in granted.permissions)


@given(_SCOPES, _SCOPES)
def test_intersect_grants_nothing_beyond_request_and_registration(requested: list[str],
                                                                  registered: list[str]) -> None:
    granted = scopes.intersect(requested, registered)
    assert len(granted) == len(set(granted))
    for item in granted:
        parsed = scopes.parse_smart(item)
        if parsed is None:
            assert item in requested and item in registered
            continue
        assert str(parsed) == item  # granted scopes are written in canonical v2 form
        assert any(_covers(r, parsed) for r in registered), (item, registered)
        assert any(_covers(r, parsed) for r in requested), (item, requested)


@given(_SCOPES)
def test_intersect_with_itself_keeps_every_valid_scope(asked: list[str]) -> None:
    granted = scopes.intersect(asked, asked)
    for item in asked:
        parsed = scopes.parse_smart(item)
        if parsed is not None:
            assert str(parsed) in granted


@given(_SCOPES, _SCOPES)
def test_asking_again_for_what_was_granted_is_granted(requested: list[str], registered: list[str]) -> None:
    granted = scopes.intersect(requested, registered)
    assert set(granted) <= set(scopes.intersect(granted, registered))


@pytest.mark.parametrize(("requested", "registered", "granted"), [
    (["system/*.rs"], ["system/Patient.cruds"], ["system/Patient.rs"]),
    (["system/Patient.cruds"], ["system/*.rs"], ["system/Patient.rs"]),
    (["system/Patient.read"], ["system/Patient.cruds"], ["system/Patient.rs"]),
    (["system/Patient.write"], ["system/Patient.rs"], []),
    (["user/Patient.rs"], ["system/*.cruds"], []),
    (["system/Patient.sr"], ["system/Patient.cruds"], []),
    (["system/Observation.rs?category=laboratory"], ["system/Observation.cruds"], []),
])
def test_intersect_examples(requested: list[str], registered: list[str], granted: list[str]) -> None:
    assert scopes.intersect(requested, registered) == granted
