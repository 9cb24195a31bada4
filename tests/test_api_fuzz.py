"""Every operation of the OpenAPI description, driven by schemathesis with generated paths, queries and bodies
against the live server on SQLite and PostgreSQL: no input, however malformed, gets a 5xx; a FHIR endpoint's
refusal is an OperationOutcome.

Generation is derandomized, so CI sees the same cases every run; RENKEI_FUZZ_EXAMPLES raises the count locally.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.infra import LiveServer, Network

EXAMPLES = int(os.environ.get("RENKEI_FUZZ_EXAMPLES", "40"))


def test_no_generated_request_gets_a_server_error(server: LiveServer, network: Network) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    bearer = network.bearer("admin")  # an administrator reaches every operation, the admin API included
    failures: list[tuple[str, str, int, Any]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        failures += _exercise(server, operation, bearer)
    assert len(operations) > 20
    assert not failures, failures[:5]


def _exercise(server: LiveServer, operation: Any, bearer: dict[str, str]) -> list[tuple[str, str, int, Any]]:
    found: list[tuple[str, str, int, Any]] = []
    where = (operation.method.upper(), operation.path)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def exercise(case: Any) -> None:
        case.headers = {**(case.headers or {}), **bearer}
        response = case.call(base_url=server.base_url, timeout=30)
        if response.status_code >= 500:
            found.append((*where, response.status_code, case.body))
        elif response.status_code >= 400 and where[1].startswith("/fhir") and response.content:
            body = orjson.loads(response.content)
            if body.get("resourceType") != "OperationOutcome":
                found.append((*where, response.status_code, body))

    exercise()
    return found


def test_a_nul_character_is_a_clear_400_and_writes_nothing(server: LiveServer, network: Network) -> None:
    """PostgreSQL stores no NUL in text: found by the fuzzing above, now a 400 wherever a value reaches it.
    SQLite can store and look it up, and so answers as for any unknown value."""
    postgres = server.settings.resolved_share_database_url.startswith("postgresql")
    http = server.client()
    login = http.post("/auth/login", json={"username": "ab\x00c", "password": "x"})
    assert login.status_code == (400 if postgres else 401), login.text
    search = http.get("/fhir/QuestionnaireResponse", params={"subject": "Patient/a\x00b"},
                      headers=network.bearer("physician"))
    assert search.status_code == (400 if postgres else 200), search.text
    if postgres:
        assert search.json()["resourceType"] == "OperationOutcome"
        assert search.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid_value"
