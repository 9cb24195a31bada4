"""Break-the-glass through the API: only the professions the matrix names, with a reason, for a limited time,
flagged in the audit trail and listed for administrators — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.share.access.projection import patient_facts
from services.share.audit.chain import chain_pending, verify
from tests.fhir_helpers import FHIR_JSON, create, created_id, patient
from tests.infra import LiveServer, Network

REASON = "救急搬送中、意識レベル低下。既往歴と服薬の確認のため"


def reason(*texts: Any) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": t} for t in texts]}


def ask(http: httpx.Client, headers: dict[str, str], pid: str, body: Any) -> httpx.Response:
    return http.post(f"/fhir/Patient/{pid}/$break-glass", json=body, headers={**headers, **FHIR_JSON})


def test_a_crew_member_gets_a_limited_grant_that_is_flagged_and_listed(
    server: LiveServer, http: httpx.Client, emergency: Network
) -> None:
    pid = created_id(create(http, emergency.bearer("physician"), patient()))
    before = datetime.now(UTC)
    answer = ask(http, emergency.bearer("crew"), pid, reason(REASON))
    assert answer.status_code == 200, answer.text
    values = {p["name"]: p for p in answer.json()["parameter"]}
    expires = datetime.fromisoformat(values["expires"]["valueInstant"])
    assert timedelta(hours=2) - timedelta(minutes=1) <= expires - before <= timedelta(hours=2, minutes=1)
    assert "EmergencySheet" in values["scope"]["valueString"]

    ctx, crew = server.app.state.share, emergency.user("crew")["id"]
    with ctx.db.sessions() as db:
        now = patient_facts(db, emergency.id, pid, datetime.now(UTC), subject=crew)
        later = patient_facts(db, emergency.id, pid, expires + timedelta(seconds=2), subject=crew)
        others = patient_facts(db, emergency.id, pid, datetime.now(UTC), subject=emergency.user("nurse")["id"])
    assert now.break_glass_until is not None and abs((now.break_glass_until - expires).total_seconds()) < 1
    assert later.break_glass_until is None and others.break_glass_until is None

    uses = http.get("/fhir/$break-glass-uses", headers=emergency.bearer("admin"))
    assert uses.status_code == 200, uses.text
    events = [entry["resource"] for entry in uses.json()["entry"]]
    assert len(events) == 1
    assert events[0]["purposeOfEvent"][0]["text"] == REASON
    assert events[0]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert events[0]["subtype"][0]["code"] == "break-glass"
    assert events[0]["entity"][0]["what"]["reference"] == f"Patient/{pid}"
    assert events[0]["agent"][0]["who"]["reference"] == f"Practitioner/{crew}"
    with ctx.db.transaction() as db:
        chain_pending(db)
    with ctx.db.sessions() as db:
        assert verify(db).intact


@pytest.mark.parametrize("role", ["nurse", "care_manager", "clerk"])
def test_other_professions_may_not_break_the_glass(http: httpx.Client, emergency: Network, role: str) -> None:
    pid = created_id(create(http, emergency.bearer("physician"), patient()))
    answer = ask(http, emergency.bearer(role), pid, reason(REASON))
    assert answer.status_code == 403 and answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("body", [reason(), reason(""), reason("  "), reason("a", "b"), reason(7),
                                  {"resourceType": "Patient"}, ["reason"], reason("x" * 1001)])
def test_a_missing_or_malformed_reason_is_refused(http: httpx.Client, emergency: Network, body: Any) -> None:
    pid = created_id(create(http, emergency.bearer("physician"), patient()))
    answer = ask(http, emergency.bearer("crew"), pid, body)
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"


def test_unknown_and_other_networks_patients_are_not_found(server: LiveServer, http: httpx.Client,
                                                           emergency: Network, network: Network) -> None:
    theirs = created_id(create(http, network.bearer("physician"), patient()))
    crew = emergency.bearer("crew")
    for pid in (theirs, "no-such-patient"):
        answer = ask(http, crew, pid, reason(REASON))
        assert answer.status_code == 404, answer.text
    assert http.get("/fhir/$break-glass-uses", headers=emergency.bearer("admin")).json()["total"] == 0


def test_the_team_is_told_at_once_when_someone_breaks_the_glass(server: LiveServer, http: httpx.Client,
                                                                 emergency: Network) -> None:
    from tests.test_push_socket import receive, subscribed

    doctor = emergency.bearer("physician")
    pid = created_id(create(http, doctor, patient()))
    socket = subscribed(server, doctor["Authorization"].removeprefix("Bearer "))
    try:
        assert ask(http, emergency.bearer("crew"), pid, reason(REASON)).status_code == 200
        while (frame := receive(socket))["type"] != "event" or frame["kind"] != "break-glass":
            pass
        assert frame["resource"]["type"] == "Patient" and frame["resource"]["id"] == pid
        assert frame["patient"] == pid and set(frame) == {"type", "seq", "kind", "resource", "patient"}
    finally:
        socket.close()
