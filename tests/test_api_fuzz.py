"""A regression the OpenAPI fuzzing found: a NUL character is a clear 400 on PostgreSQL.

The fuzzing itself — every operation of the OpenAPI description, both services, with a token and without — lives in
tests/reliability/test_hostile.py (``RENKEI_RELIABILITY_EXAMPLES``; ``RENKEI_FUZZ_EXAMPLES`` still works there).
"""

from __future__ import annotations

from tests.infra import LiveServer, Network


def test_a_nul_character_is_a_clear_400_and_writes_nothing(server: LiveServer, network: Network) -> None:
    """PostgreSQL stores no NUL in text: found by the OpenAPI fuzzing, now a 400 wherever a value reaches it.
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
