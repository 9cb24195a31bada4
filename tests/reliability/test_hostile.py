"""Hostile input, against the live server on SQLite and PostgreSQL (the reliability suite's part of the
"production" issue).

1. Every operation of the OpenAPI description — the identity service's (/auth), the share service's (/fhir, /push)
   and the probes', all in the one description the app serves — driven by schemathesis with generated paths,
   queries, headers and bodies, once with a network administrator's valid token (who reaches every operation, the
   admin API included) and once without any token. No answer is a 5xx; every error is well formed: an
   OperationOutcome with a non-empty issue list under /fhir, OAuth-style ``{"error": …}`` JSON elsewhere; every
   answer says what it is (Content-Type), JSON ones parse, a 401 under /fhir carries its challenge. (This grew
   out of tests/test_api_fuzz.py, which now keeps only its NUL-character regression test.)
2. Hypothesis-generated FHIR JSON against create (POST /fhir/{type}) and update (PUT /fhir/{type}/{id}), written
   as raw bytes: wrong types anywhere, unicode edge cases (lone surrogates escaped in JSON, NUL, RTL marks, emoji,
   non-NFC, noncharacters), duplicate keys, integers and decimals out of range, nesting far past the bound.
   Whatever must be refused is a 4xx OperationOutcome and stores nothing (versions and events counted in the
   database before and after); whatever is accepted reads back exactly as it was sent. Then the big ones, one
   each: 10,000 levels of nesting, strings of several MB under and over FHIR's 1 MB string limit and over the
   body limit.

Sizes: ``RENKEI_RELIABILITY_EXAMPLES`` is the number of generated cases per operation and token state (default 16:
CI) — the FHIR body test runs ten times that per backend. The full run is ``RENKEI_RELIABILITY_EXAMPLES=150``
(19,510 schemathesis cases and 1,500 bodies per backend, about 6 minutes). Generation is derandomized: CI sees the same
cases every run. Every test prints what it ran (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.fhir_helpers import FHIR_JSON, create, created_id, observation, patient
from tests.infra import LiveServer, Network

EXAMPLES = int(os.environ.get("RENKEI_RELIABILITY_EXAMPLES") or os.environ.get("RENKEI_FUZZ_EXAMPLES") or "16")
TOKEN_RENEW_SECONDS = 300  # access tokens live ten minutes; a full run lasts longer

# --------------------------------------------------------------------------------------------------------------
# 1. Every operation, with and without a token
# --------------------------------------------------------------------------------------------------------------

Failure = tuple[str, str, str, int, Any]


def _header(response: Any, name: str) -> str | None:
    values = response.headers.get(name.lower())
    if isinstance(values, list):
        return values[0] if values else None
    return values if isinstance(values, str) else None


def response_problems(path: str, response: Any) -> list[str]:
    """What is wrong with one answer, by the rules every endpoint keeps (empty: nothing)."""
    status, content = response.status_code, response.content or b""
    problems: list[str] = []
    content_type = (_header(response, "content-type") or "").lower()
    if status >= 500:
        problems.append("server error")
    if _header(response, "x-content-type-options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    if content and not content_type:
        problems.append("a body without a Content-Type")
    body: Any = None
    if "json" in content_type and content:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            problems.append(f"{content_type} that does not parse")
    # FHIR answers are FHIR JSON, but for the SMART configuration (application/json, as SMART says) and a Binary
    # read raw (its own type).
    raw_ok = path.endswith("smart-configuration") or "Binary" in str(response.request.url)
    if status < 300 and content and path.startswith("/fhir") and not raw_ok and \
            not content_type.startswith("application/fhir+json"):
        problems.append(f"a FHIR answer as {content_type!r}")
    if status >= 400:
        if path.startswith("/fhir"):
            if not content_type.startswith("application/fhir+json"):
                problems.append(f"a FHIR error as {content_type!r}")
            issues = body.get("issue") if isinstance(body, dict) else None
            if not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
                    and isinstance(issues, list) and issues
                    and all(isinstance(i, dict) and i.get("severity") and i.get("code") for i in issues)):
                problems.append("a FHIR error that is not an OperationOutcome with issues")
            if status == 401 and not _header(response, "www-authenticate"):
                problems.append("a 401 without WWW-Authenticate")
        else:
            if not content_type.startswith("application/json"):
                problems.append(f"an error as {content_type!r}")
            if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
                problems.append('an error without {"error": …}')
    return problems


class Bearer:
    """The administrator's header, renewed when old (or when a generated logout may have ended its session)."""

    def __init__(self, network: Network) -> None:
        self.network, self.at, self.value = network, 0.0, {"Authorization": ""}

    def __call__(self, renew: bool = False) -> dict[str, str]:
        if renew or time.monotonic() - self.at > TOKEN_RENEW_SECONDS:
            try:
                self.value = {"Authorization": f"Bearer {self.network.login('admin')['access_token']}"}
                self.at = time.monotonic()
            except (AssertionError, KeyError):  # a generated settings change (mfa_required) may lock the admin out
                pass
        return self.value


def test_no_generated_request_gets_a_server_error_or_a_malformed_answer(server: LiveServer, network: Network) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    # One description holds both services (and the probes): the fuzzing below reaches all of them.
    assert {"/auth/login", "/auth/token", "/auth/admin/users/{user_id}", "/fhir/{resource_type}/{resource_id}",
            "/fhir", "/push/devices", "/healthz"} <= paths, sorted(paths)
    assert len(operations) > 60
    bearer = Bearer(network)
    session = requests.Session()
    failures: list[Failure] = []
    counted = {"token": 0, "none": 0}
    started = time.monotonic()
    for operation in operations:
        for mode in ("token", "none"):
            failures += _exercise(server, session, operation, bearer if mode == "token" else None, counted, mode)
    seconds = time.monotonic() - started
    print(f"\nschemathesis: {len(operations)} operations, {counted['token']} cases with a token and "
          f"{counted['none']} without, {seconds:.1f} s")
    assert counted["token"] >= len(operations) and counted["none"] >= len(operations)
    assert not failures, failures[:5]


def _exercise(server: LiveServer, session: requests.Session, operation: Any, bearer: Bearer | None,
              counted: dict[str, int], mode: str) -> list[Failure]:
    found: list[Failure] = []
    method, path = operation.method.upper(), operation.path
    renew = path == "/auth/logout" or "/sessions" in path or "/devices" in path

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def exercise(case: Any) -> None:
        headers = dict(case.headers or {})
        headers.pop("Authorization", None)
        headers.pop("authorization", None)
        if bearer is not None:
            headers.update(bearer())
        case.headers = headers
        response = case.call(base_url=server.base_url, session=session, timeout=60)
        counted[mode] += 1
        problems = response_problems(path, response)
        if problems:
            found.append((method, path, mode, response.status_code, (problems, case.body, response.content[:300])))

    exercise()
    if bearer is not None and renew:
        bearer(renew=True)
    return found


# --------------------------------------------------------------------------------------------------------------
# 2. Hostile FHIR JSON against create and update
# --------------------------------------------------------------------------------------------------------------


class Target:
    """A network with a patient, its physician's client, and the database counts a refused write must not move."""

    def __init__(self, server: LiveServer, network: Network) -> None:
        self.server, self.network = server, network
        # From loopback, which the rate limits exempt (as they do the benchmarks): a full run sends thousands of
        # bodies as one user, and a 429 must not pass for a refusal.
        self.http = httpx.Client(base_url=server.base_url, timeout=120)
        self.auth = network.bearer("physician")
        self.headers = {**self.auth, **FHIR_JSON}
        self.pid = created_id(create(self.http, self.auth, patient()))
        self.obs = created_id(create(self.http, self.auth, observation(self.pid)))

    def counts(self) -> tuple[int, int]:
        """(resource versions, events) of this network, read in the database."""
        with self.server.app.state.share.db.transaction() as db:
            versions = db.execute(text("SELECT count(*) FROM resource_versions WHERE network_id = :n"),
                                  {"n": self.network.id}).scalar_one()
            events = db.execute(text("SELECT count(*) FROM event_log WHERE network_id = :n"),
                                {"n": self.network.id}).scalar_one()
        return int(versions), int(events)

    def send(self, method: str, resource_type: str, raw: bytes) -> httpx.Response:
        url = f"/fhir/{resource_type}"
        if method == "PUT":
            url += f"/{self.pid if resource_type == 'Patient' else self.obs}"
        return self.http.request(method, url, content=raw, headers=self.headers, timeout=120)


def is_outcome(answer: httpx.Response) -> bool:
    if not answer.headers.get("content-type", "").startswith("application/fhir+json"):
        return False
    body = answer.json()
    return (body.get("resourceType") == "OperationOutcome" and isinstance(body.get("issue"), list)
            and bool(body["issue"]))


def check_write(target: Target, method: str, resource_type: str, raw: bytes, must_refuse: bool,
                sent: dict[str, Any] | None) -> int:
    """Send one body; a refusal is a 4xx OperationOutcome that stored nothing, an acceptance reads back as sent."""
    before = target.counts()
    answer = target.send(method, resource_type, raw)
    after = target.counts()
    status = answer.status_code
    assert status < 500 and status != 429, (status, answer.text[:500], raw[:300])
    if must_refuse:
        assert 400 <= status < 500, (status, answer.text[:300], raw[:300])
    if status >= 400:
        assert is_outcome(answer), (status, answer.text[:300])
        assert after == before, ("a refused write changed the store", before, after, answer.text[:200])
    else:
        assert status in (200, 201), (status, answer.text[:300])
        assert after[0] > before[0] and after[1] > before[1], (before, after)
        if sent is not None:
            stored = target.http.get(f"/fhir/{resource_type}/{answer.json()['id']}", headers=target.auth).json()
            strip = ("id", "meta")
            assert {k: v for k, v in stored.items() if k not in strip} == \
                {k: v for k, v in sent.items() if k not in strip}, (stored, sent)
    return status


LONE_SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\udc00\ud800"]
EDGE_STRINGS = ["a\x00b", "\x00", "\u202eevil\u202c", "\u200f\u05e9\u05dc\u05d5\u05dd\u200e", "👨‍👩‍👧‍👦🏥🩺",
                "e\u0301", "\u304b\u3099", "ｶﾞ", "\ufeffBOM", "\uffff\ufffe", "\U0010ffff", "\u2028\u2029",
                "\x7f\x1b[31m", "\r\n", '"},{"resourceType":"Patient', "\\u0000", " ", "", "渡辺"]
strings = st.one_of(st.sampled_from(EDGE_STRINGS + LONE_SURROGATES),
                    st.text(alphabet=st.characters(codec=None), max_size=20))  # surrogates (Cs) included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=8,
)


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def dump(value: Any, duplicate: int | None = None, counter: list[int] | None = None) -> str:
    """JSON text (ASCII: lone surrogates become \\udXXX escapes); the ``duplicate``-th object met writes its first
    key twice (with a null the second time), which no dict can hold."""
    counter = counter if counter is not None else [0]
    if isinstance(value, dict):
        index = counter[0]
        counter[0] += 1
        parts = [f"{json.dumps(k)}:{dump(v, duplicate, counter)}" for k, v in value.items()]
        if index == duplicate and value:
            parts.append(f"{json.dumps(next(iter(value)))}:null")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, duplicate, counter) for v in value) + "]"
    return json.dumps(value)


def nested(levels: int, kind: str) -> str:
    if kind == "extension":
        return '[{"url":"urn:x","extension":' * levels + "[]" + "}]" * levels
    if kind == "array":
        return "[" * levels + "]" * levels
    return '{"a":' * levels + "1" + "}" * levels


@st.composite
def hostile(draw: st.DrawFn, pid: str) -> tuple[str, str, bytes, bool, dict[str, Any] | None]:
    """(method, type, raw body, must it be refused, the body as sent when it may be accepted)."""
    method = draw(st.sampled_from(["POST", "PUT"]))
    resource_type = draw(st.sampled_from(["Patient", "Observation"]))
    body = patient() if resource_type == "Patient" else observation(pid)
    if method == "PUT":
        body["id"] = "PUT-ID"  # the target's id, put in by the test
    kind = draw(st.sampled_from(["wrong-type", "unicode", "duplicate-key", "number", "nesting"]))
    must_refuse = False
    raw: str | None = None
    if kind == "wrong-type":
        key = draw(st.sampled_from([*body, "id", "meta", "text", "extension", "contained", "resourceType"]))
        body[key] = draw(json_values)
    elif kind == "unicode":
        text_value = draw(strings)
        where = draw(st.sampled_from(["name", "identifier", "key"]))
        if where == "key":
            body[text_value] = "x"  # an unknown element named by the string: always refused
            must_refuse = True
        elif resource_type == "Patient" and where == "name":
            body["name"][0]["family"] = text_value
        elif resource_type == "Patient":
            body["identifier"][0]["value"] = text_value
        else:
            body["code"]["text"] = text_value
        must_refuse = must_refuse or has_lone_surrogate(text_value) or text_value == ""
    elif kind == "duplicate-key":
        objects = dump(body).count("{")
        raw = dump(body, duplicate=draw(st.integers(0, objects - 1)))
        must_refuse = True
    elif kind == "number":
        body = observation(pid) if method == "POST" else {**observation(pid), "id": "PUT-ID"}
        resource_type = "Observation"
        shape = draw(st.sampled_from(["integer", "decimal-text"]))
        if shape == "integer":
            value = draw(st.one_of(st.integers(2**31, 2**80), st.integers(-(2**80), -(2**31) - 1)))
            body.pop("valueQuantity")
            body["valueInteger"] = value
            must_refuse = True
        else:
            literal = draw(st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" + "0" * 400,
                                            "0x10", "+1", ".5", "01", "1.", "1e"]))
            raw = dump(body).replace('"value":36.8', f'"value":{literal}')
            must_refuse = True
    else:
        levels = draw(st.sampled_from([101, 200, 1023, 1025, 10_000]))
        shape = draw(st.sampled_from(["extension", "array", "object"]))
        raw = dump(body)[:-1] + ',"extension":' + nested(levels, shape) + "}"
        must_refuse = True
    if raw is None:
        raw = dump(body)
    return method, resource_type, raw.encode(), must_refuse, None if must_refuse else body


def test_hostile_fhir_json_is_refused_cleanly_and_stores_nothing(server: LiveServer, network: Network) -> None:
    target = Target(server, network)
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES * 10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=hostile(target.pid))
    def write(case: tuple[str, str, bytes, bool, dict[str, Any] | None]) -> None:
        method, resource_type, raw, must_refuse, sent = case
        if method == "PUT":
            own = (target.pid if resource_type == "Patient" else target.obs).encode()
            raw = raw.replace(b'"PUT-ID"', b'"' + own + b'"')
            if sent is not None:
                sent = {**sent, "id": own.decode()}
        status = check_write(target, method, resource_type, raw, must_refuse, sent)
        outcome = f"{method} {'refused' if status >= 400 else 'accepted'}"
        seen[outcome] = seen.get(outcome, 0) + 1

    started = time.monotonic()
    write()
    print(f"\nhostile bodies: {sum(seen.values())} in {time.monotonic() - started:.1f} s: {seen}")
    assert sum(seen.values()) >= EXAMPLES * 5


def _big(size: int, where: str, pid: str) -> bytes:
    body = patient()
    if where == "family":
        body["name"][0]["family"] = "渡" * size
    elif where == "identifier":
        body["identifier"][0]["value"] = "x" * size
    return orjson.dumps(body)


BIG: list[tuple[str, Callable[[str], bytes], int]] = [
    # (what, body, expected status)
    ("10,000 levels of extension", lambda pid: orjson.dumps(patient())[:-1] + b',"extension":'
     + nested(10_000, "extension").encode() + b"}", 400),
    ("10,000 levels of arrays", lambda pid: orjson.dumps(patient())[:-1] + b',"x":'
     + nested(10_000, "array").encode() + b"}", 400),
    ("a 1 MiB + 1 character name (FHIR's string limit)", lambda pid: _big(1024 * 1024 + 1, "family", pid), 400),
    ("a 3 MB identifier", lambda pid: _big(3_000_000, "identifier", pid), 400),
    ("a 7 MB name (21 MB of UTF-8, past the body limit)", lambda pid: _big(7_000_000, "family", pid), 413),
]


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_huge_and_deep_bodies_are_refused_and_store_nothing(server: LiveServer, network: Network,
                                                            method: str) -> None:
    target = Target(server, network)
    for what, make, expected in BIG:
        raw = make(target.pid)
        if method == "PUT":
            raw = raw.replace(b'{"resourceType":"Patient"', b'{"resourceType":"Patient","id":"%s"'
                              % target.pid.encode(), 1)
        before = target.counts()
        answer = target.send(method, "Patient", raw)
        assert answer.status_code == expected, (what, answer.status_code, answer.text[:300])
        assert is_outcome(answer), what
        assert target.counts() == before, what
    # Under every limit, a large body is still taken: 900,000 characters in one string.
    fine = patient()
    fine["name"][0]["text"] = "渡" * 900_000
    if method == "PUT":
        fine["id"] = target.pid
    check_write(target, method, "Patient", orjson.dumps(fine), False, fine)
