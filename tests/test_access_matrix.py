"""The authorisation matrix, against the live API on SQLite and PostgreSQL.

Generated from profession × team membership × consent state × resource kind × action × sensitivity label: one
user of each profession (each in an organisation of their own) asks about sixteen patients — every combination of
how they belong to the team (as a user, through their organisation, a membership that ended, not at all) and of
the patient's consent (none, active with two labels withheld, active but excluding half the organisations,
revoked) — for every resource kind the CapabilityStatement lists, reading, searching, creating and updating.

The expected outcome is computed here, independently, from ``schemas/access/permissions.json`` and the code
systems, by the rules of DESIGN.md section 6 — not by the server's decision code.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fhir_helpers import FHIR_JSON, patient
from tests.infra import PASSWORD, LiveServer, bootstrap
from tests.planted import register_secret

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
ROLE = "urn:renkei:codesystem:care-team-role"
LABEL = "urn:renkei:codesystem:sensitivity-label"
SECTION_LABEL = "urn:renkei:extension:sensitivity-label"
WITHHELD = ["mental-health", "acp"]  # what the "withholding" consent keeps back
MEMBERSHIPS = ["practitioner", "organization", "ended", "none"]
CONSENTS = ["none", "withholding", "excluding", "revoked"]


def _codes(name: str) -> list[str]:
    return [c["code"] for c in json.loads((SCHEMAS / "codesystems" / f"{name}.json").read_text())["concept"]]


LABELS, SHEETS, PROFESSIONS = _codes("sensitivity-label"), _codes("sheet-kind"), _codes("profession")


@dataclass(frozen=True)
class Row:
    read: frozenset[str]
    write: frozenset[str]
    sheets_read: frozenset[str]
    sheets_write: frozenset[str]
    labels: frozenset[str]


def expected_rows(kinds: list[str]) -> tuple[dict[str, Row], frozenset[str]]:
    """The matrix file read the simple way: ``*`` is everything, ``@g`` a group."""
    raw = json.loads((SCHEMAS / "access" / "permissions.json").read_text())

    def names(values: list[str], universe: list[str]) -> frozenset[str]:
        found: set[str] = set()
        for value in values:
            found |= set(universe) if value == "*" else set(raw["groups"][value[1:]]) if value[0] == "@" else {value}
        return frozenset(found)

    rows = {p: Row(names(r["read"], kinds), names(r["write"], kinds) - {"AuditEvent"},
                   names(r["sheets_read"], SHEETS), names(r["sheets_write"], SHEETS), names(r["labels"], LABELS))
            for p, r in raw["professions"].items()}
    return rows, frozenset(raw["team"]["managers"])


# The world --------------------------------------------------------------------------------------------------


def minimal(kind: str, pid: str, sheet: str = "DischargeSheet") -> dict[str, Any]:
    subject = {"reference": f"Patient/{pid}"}
    bodies: dict[str, dict[str, Any]] = {
        "RelatedPerson": {"patient": subject, "name": [{"text": "山田 花子"}]},
        "QuestionnaireResponse": {
            "questionnaire": f"{VARIANT}{sheet}|matrix", "status": "completed", "subject": subject,
            "item": [{"linkId": label, "text": label, "item": [
                {"linkId": f"{label}.note", "text": "記載", "answer": [{"valueString": f"{label} の記載"}]}]}
                for label in LABELS]},
        "Composition": {"status": "final", "type": {"text": "退院時サマリー"}, "subject": subject,
                        "date": "2026-11-01", "author": [{"display": "主治医"}], "title": "退院時サマリー"},
        "Communication": {"status": "completed", "subject": subject, "payload": [{"contentString": "訪問しました"}]},
        "Task": {"status": "requested", "intent": "order", "for": subject},
        "DocumentReference": {"status": "current", "subject": subject,
                              "content": [{"attachment": {"contentType": "text/plain", "data": "5YaF5a65"}}]},
        "Observation": {"status": "final", "code": {"text": "体温"}, "subject": subject,
                        "valueQuantity": {"value": 36.8, "unit": "Cel"}},
        "CareTeam": {"status": "proposed", "subject": subject},
        "Consent": {"status": "draft", "scope": {"text": "patient-privacy"}, "category": [{"text": "共同利用"}],
                    "patient": subject},
    }
    return {"resourceType": kind, **bodies[kind]}


VARIANT = "urn:renkei:test:questionnaire:"


def variant(sheet: str) -> dict[str, Any]:
    """The network's own version of a sheet kind, with one section per sensitivity label: so that every label of
    every kind is put to the test (a shipped template has the sections its form has)."""
    def english(text: str) -> dict[str, Any]:
        return {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/translation", "extension": [
            {"url": "lang", "valueCode": "en"}, {"url": "content", "valueString": text}]}]}

    return {"resourceType": "Questionnaire", "url": f"{VARIANT}{sheet}", "version": "matrix", "name": sheet,
            "status": "active", "code": [{"system": "urn:renkei:codesystem:sheet-kind", "code": sheet}],
            "item": [{"linkId": label, "text": f"{label} の項目", "_text": english(f"{label} section"), "type": "group",
                      "extension": [{"url": SECTION_LABEL, "valueCoding": {"system": LABEL, "code": label}}],
                      "item": [{"linkId": f"{label}.note", "text": "記載", "_text": english("Note"),
                                "type": "string"}]} for label in LABELS]}


@dataclass
class World:
    network: str
    writer: dict[str, str]  # the physician (organisation W) who registered and wrote everything
    users: dict[str, dict[str, str]]  # profession -> its tester's headers
    orgs: dict[str, str]  # profession -> its tester's organisation
    patients: dict[tuple[str, str], str]  # (membership, consent) -> patient id
    resources: dict[str, list[tuple[str, str, str | None, dict[str, Any]]]]  # pid -> (kind, id, sheet, body)
    all_kinds: list[str]  # every resource kind the server supports (its CapabilityStatement)


def build_world(server: LiveServer, kinds: list[str], all_kinds: list[str]) -> World:
    tag = uuid.uuid4().hex[:8]
    orgs = {p: f"org-{p}-{tag}" for p in PROFESSIONS}
    writer_org = f"org-writer-{tag}"
    users = [{"id": f"u-{p}-{tag}", "username": f"u-{p}-{tag}", "password": PASSWORD, "organization": orgs[p],
              "profession": p, "name": f"テスト {p}", "admin": False} for p in PROFESSIONS]
    users.append({"id": f"writer-{tag}", "username": f"writer-{tag}", "password": PASSWORD,
                  "organization": writer_org, "profession": "physician", "name": "記載医", "admin": False})
    users.append({"id": f"admin-{tag}", "username": f"admin-{tag}", "password": PASSWORD,
                  "organization": writer_org, "profession": "physician", "name": "管理者", "admin": True})
    network = f"net-{tag}"
    bootstrap(server, {
        "network": {"id": network, "name": f"マトリクス {tag}",
                    "settings": {"mfa_required": False, "team_join_approvals": []}},
        "organizations": [{"id": o, "name": o, "type": "clinic"} for o in [*orgs.values(), writer_org]],
        "users": users, "clients": []})
    http = server.client()

    def bearer(username: str) -> dict[str, str]:
        answer = server.client().post("/auth/login", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 200 and "access_token" in answer.json(), answer.text
        token = answer.json()["access_token"]
        register_secret("access token", token)
        return {"Authorization": f"Bearer {token}"}

    writer = bearer(f"writer-{tag}")
    for sheet in SHEETS:
        _post(http, bearer(f"admin-{tag}"), variant(sheet))
    testers = {p: bearer(f"u-{p}-{tag}") for p in PROFESSIONS}
    world = World(network, writer, testers, orgs, {}, {}, all_kinds)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    for membership in MEMBERSHIPS:
        # Outside the team the consent changes nothing: two of its states are enough there.
        for consent in CONSENTS if membership in ("practitioner", "organization") else CONSENTS[:2]:
            pid = _post(http, writer, patient())["id"]
            world.patients[(membership, consent)] = pid
            team = {"resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{pid}"},
                    "participant": _participants(membership, tag, orgs, yesterday)}
            registered = http.get("/fhir/CareTeam", params={"patient": pid}, headers=writer).json()["entry"]
            stored = [("Patient", pid, None, {}), ("CareTeam", _post(http, writer, team)["id"], None, team),
                      ("CareTeam", registered[0]["resource"]["id"], None, registered[0]["resource"])]
            body = _consent(pid, consent, orgs)
            if body is not None:
                stored.append(("Consent", _post(http, writer, body)["id"], None, body))
            for kind in kinds:
                if kind in ("Patient", "CareTeam", "Consent"):
                    continue
                for sheet in SHEETS if kind == "QuestionnaireResponse" else [None]:
                    made = minimal(kind, pid, sheet or "DischargeSheet")
                    stored.append((kind, _post(http, writer, made)["id"], sheet, made))
            # What the server wrote on the writer's behalf: the acknowledgement a shared discharge sheet asks for.
            known = {rid for _, rid, _, _ in stored}
            stored += [("Task", entry["resource"]["id"], None, entry["resource"]) for entry in http.get(
                "/fhir/Task", params={"patient": pid}, headers=writer).json().get("entry", [])
                if entry["resource"]["id"] not in known]
            world.resources[pid] = stored
    return world


def _participants(membership: str, tag: str, orgs: dict[str, str], yesterday: str) -> list[dict[str, Any]]:
    role = [{"coding": [{"system": ROLE, "code": "visiting-nurse"}]}]
    if membership == "none":
        return []
    if membership == "organization":
        return [{"role": role, "member": {"reference": f"Organization/{o}"}} for o in orgs.values()]
    period = {"start": "2026-01-01", **({"end": yesterday} if membership == "ended" else {})}
    return [{"role": role, "member": {"reference": f"Practitioner/u-{p}-{tag}"}, "period": period}
            for p in PROFESSIONS]


def excluded_orgs(orgs: dict[str, str]) -> set[str]:
    return {orgs[p] for i, p in enumerate(PROFESSIONS) if i % 2 == 0}


def _consent(pid: str, state: str, orgs: dict[str, str]) -> dict[str, Any] | None:
    if state == "none":
        return None
    provision: dict[str, Any] = {"type": "permit", "period": {"start": "2026-01-01"}}
    if state == "withholding":
        provision["provision"] = [{"type": "deny", "securityLabel": [{"system": LABEL, "code": c} for c in WITHHELD]}]
    if state == "excluding":
        provision["provision"] = [{"type": "deny", "actor": [
            {"role": {"text": "除外"}, "reference": {"reference": f"Organization/{o}"}}
            for o in sorted(excluded_orgs(orgs))]}]
    return {"resourceType": "Consent", "status": "inactive" if state == "revoked" else "active",
            "scope": {"text": "patient-privacy"}, "category": [{"text": "共同利用への同意"}],
            "patient": {"reference": f"Patient/{pid}"}, "dateTime": "2026-01-01T10:00:00+09:00",
            "provision": provision}


def _post(http: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    answer = http.post(f"/fhir/{body['resourceType']}", json=body, headers={**headers, **FHIR_JSON})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


# What should happen ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    status: int
    sections: frozenset[str] | None = None  # for a sheet read: the labels whose sections are shown


def expect(row: Row, managers: frozenset[str], world: World, profession: str, membership: str, consent: str,
           kind: str, action: str, sheet: str | None) -> Expected:
    member = membership in ("practitioner", "organization")
    if not member:
        return Expected({"read": 404, "update": 404, "create": 400}[action])
    writes = action in ("create", "update")
    if kind not in (row.write if writes else row.read):
        return Expected(403)
    covered = consent in ("withholding",) or (consent == "excluding"
                                              and world.orgs[profession] not in excluded_orgs(world.orgs))
    if not covered and action == "read":  # without consent an organisation sees only what its own members wrote:
        return Expected(404)  # another's sheet is not known to it at all, of whatever kind
    if sheet is not None and sheet not in (row.sheets_write if writes else row.sheets_read):
        return Expected(403)
    if kind == "CareTeam" and writes and "visiting-nurse" not in managers:
        return Expected(403)
    if action == "create":
        return Expected(201)
    if not covered:
        return Expected(404)
    if action == "update":
        return Expected(200)
    labels = row.labels - (set(WITHHELD) if consent == "withholding" else set())
    return Expected(200, frozenset(labels) if sheet is not None else None)


# The test ---------------------------------------------------------------------------------------------------


@pytest.fixture
def world(server: LiveServer) -> World:
    metadata = server.client().get("/fhir/metadata").json()
    every = [r["type"] for r in metadata["rest"][0]["resource"]]
    # The kinds held in a patient's compartment (Binary has its own tests: tests/test_fhir_binary.py).
    kinds = [kind for kind in every if kind not in ("AuditEvent", "Binary", "Organization", "Practitioner",
                                                    "PractitionerRole", "Questionnaire", "Bundle", "Subscription")]
    return build_world(server, kinds, every)


def run_all(checks: list[Callable[[], str | None]]) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return [problem for problem in pool.map(lambda check: check(), checks) if problem]


def test_the_matrix_holds_for_every_combination(server: LiveServer, world: World) -> None:
    """Reads and searches first, then writes (which add resources the searches would find)."""
    _reads_and_searches(server, world)
    _writes(server, world)


def _reads_and_searches(server: LiveServer, world: World) -> None:
    kinds = sorted({kind for stored in world.resources.values() for kind, *_ in stored})
    rows, managers = expected_rows(world.all_kinds)
    http = server.client()
    checks: list[Callable[[], str | None]] = []
    for profession in PROFESSIONS:
        for (membership, consent), pid in world.patients.items():
            for kind, rid, sheet, _ in world.resources[pid]:
                want = expect(rows[profession], managers, world, profession, membership, consent, kind, "read", sheet)
                checks.append(lambda p=profession, k=kind, r=rid, w=want, c=(membership, consent, sheet):
                              _check_read(http, world.users[p], k, r, w, f"{p} {c} read {k}"))
            for kind in kinds:
                visible = {rid for k, rid, sheet, _ in world.resources[pid] if k == kind and expect(
                    rows[profession], managers, world, profession, membership, consent, kind, "read", sheet
                ).status == 200}
                checks.append(lambda p=profession, k=kind, i=pid, v=visible, c=(membership, consent):
                              _check_search(http, world.users[p], k, i, v, f"{p} {c} search {k}"))
    problems = run_all(checks)
    assert not problems, f"{len(problems)} of {len(checks)} checks differ:\n" + "\n".join(problems[:40])


def _writes(server: LiveServer, world: World) -> None:
    kinds = sorted({kind for stored in world.resources.values() for kind, *_ in stored} - {"Patient"})
    rows, managers = expected_rows(world.all_kinds)
    http = server.client()
    checks: list[Callable[[], str | None]] = []
    for profession in PROFESSIONS:
        row = rows[profession]
        checks.append(lambda p=profession, w=201 if "Patient" in row.write else 403:
                      _check_status(http.post("/fhir/Patient", json=patient(), headers={**world.users[p], **FHIR_JSON}),
                                    w, f"{p} register a patient"))
        for (membership, consent), pid in world.patients.items():
            for kind in kinds:
                want = expect(row, managers, world, profession, membership, consent, kind, "create",
                              "DischargeSheet" if kind == "QuestionnaireResponse" else None)
                checks.append(lambda p=profession, k=kind, i=pid, w=want, c=(membership, consent):
                              _check_status(http.post(f"/fhir/{k}", json=minimal(k, i),
                                                      headers={**world.users[p], **FHIR_JSON}),
                                            w.status, f"{p} {c} create {k}"))
            for kind, rid, sheet, body in world.resources[pid]:
                if kind not in kinds or kind in ("CareTeam", "Consent") or sheet not in (None, "DischargeSheet"):
                    continue  # the team and consent stay as they are; one sheet kind is enough for updates
                want = expect(row, managers, world, profession, membership, consent, kind, "update", sheet)
                checks.append(lambda p=profession, k=kind, r=rid, b=body, w=want, c=(membership, consent):
                              _check_status(http.put(f"/fhir/{k}/{r}", json=_changed(b, r),
                                                     headers={**world.users[p], **FHIR_JSON}),
                                            w.status, f"{p} {c} update {k}"))
    problems = run_all(checks)
    assert not problems, f"{len(problems)} of {len(checks)} checks differ:\n" + "\n".join(problems[:40])


def _changed(body: dict[str, Any], resource_id: str) -> dict[str, Any]:
    """The body as an update: a shared sheet changes as an amendment (services/share/sheets/lifecycle.py)."""
    status = "amended" if body["resourceType"] == "QuestionnaireResponse" else body.get("status")
    return {**body, "id": resource_id, **({"status": status} if status else {})}


def _check_status(answer: httpx.Response, want: int, what: str) -> str | None:
    if answer.status_code != want:
        return f"{what}: {answer.status_code}, expected {want}: {answer.text[:160]}"
    if want >= 400 and answer.json().get("resourceType") != "OperationOutcome":
        return f"{what}: a refusal that is not an OperationOutcome"
    return None


def _check_read(http: httpx.Client, headers: dict[str, str], kind: str, rid: str, want: Expected,
                what: str) -> str | None:
    answer = http.get(f"/fhir/{kind}/{rid}", headers=headers)
    problem = _check_status(answer, want.status, what)
    if problem or want.sections is None:
        return problem
    body = answer.json()
    shown = {item["linkId"] for item in body["item"] if "item" in item}
    if shown != want.sections:
        return f"{what}: sections {sorted(shown)}, expected {sorted(want.sections)}"
    redacted = any(s.get("code") == "REDACTED" for s in body.get("meta", {}).get("security", []))
    if redacted != (want.sections != set(LABELS)):
        return f"{what}: REDACTED marker is {redacted}"
    return None


def _check_search(http: httpx.Client, headers: dict[str, str], kind: str, pid: str, visible: set[str],
                  what: str) -> str | None:
    params = {"_id": pid} if kind == "Patient" else {"patient": pid}
    answer = http.get(f"/fhir/{kind}", params={**params, "_count": 50}, headers=headers)
    if answer.status_code != 200:
        return f"{what}: {answer.status_code} {answer.text[:160]}"
    found = {entry["resource"]["id"] for entry in answer.json().get("entry", [])
             if entry.get("search", {}).get("mode") == "match"}
    if found != visible:
        return f"{what}: found {len(found)}, expected {len(visible)}"
    return None
