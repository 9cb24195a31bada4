"""The permission matrix and the access decision, as data and a pure function.

The expected outcome of every (profession × team membership × consent state × resource kind × action) case is
computed here from the raw matrix file, independently of services/share/access/matrix.py's expansion.
"""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.kit.settings import REPO_ROOT
from services.kit.tokens import Principal
from services.share.access.decision import (
    Action,
    Basis,
    ConsentState,
    Participant,
    PatientFacts,
    Request,
    decide,
)
from services.share.access.matrix import MatrixError, load_matrix
from services.share.store.types import READ_ONLY, SUPPORTED

SCHEMAS = REPO_ROOT / "schemas"
RAW = json.loads((SCHEMAS / "access" / "permissions.json").read_text())
MATRIX = load_matrix(SCHEMAS)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NETWORK, PATIENT, USER, ORG = "net-a", "p-1", "u-1", "org-1"


def user(profession: str, *, subject: str = USER, organization: str = ORG, network: str = NETWORK) -> Principal:
    return Principal("user", subject, network, organization, profession, [], "s", None, {})


def client(*scopes: str, organization: str = ORG) -> Principal:
    return Principal("system", "client-1", NETWORK, organization, None, list(scopes), None, None, {})


def member(kind: str = "practitioner", who: str = USER, *, end: datetime | None = None,
           approved: bool = True) -> Participant:
    return Participant(kind, who, "visiting-nurse", NOW - timedelta(days=30), end, approved)


def facts(*team: Participant, consent: ConsentState = ConsentState(active=True),
          glass: datetime | None = None) -> PatientFacts:
    return PatientFacts(NETWORK, PATIENT, tuple(team), consent, glass)


def expand(values: list[str], universe: set[str]) -> set[str]:
    """The test's own reading of the file's '*' and '@group' notation."""
    out: set[str] = set()
    for value in values:
        out |= universe if value == "*" else set(RAW["groups"][value[1:]]) if value[0] == "@" else {value}
    return out


def expected(profession: str, membership: str, consent: str, kind: str, action: Action) -> tuple[bool, str | None]:
    """(allowed, basis) from the raw file and the rules in DESIGN.md section 6."""
    if membership in ("none", "ended", "unapproved"):
        return False, None
    row = RAW["professions"][profession]
    kinds = expand(row["write" if action.writes else "read"], set(SUPPORTED))
    if action.writes:
        kinds -= set(READ_ONLY)
    if kind not in kinds:
        return False, None
    return True, "team" if consent == "active" else "own-organization"


# The matrix file ----------------------------------------------------------------------------------------------


def test_every_profession_has_a_row_and_audit_events_are_never_written() -> None:
    professions = {c["code"] for c in json.loads((SCHEMAS / "codesystems" / "profession.json").read_text())["concept"]}
    assert set(MATRIX.professions) == professions
    assert all("AuditEvent" not in permissions.write for permissions in MATRIX.professions.values())
    assert MATRIX.of("physician").sheets_read == MATRIX.sheet_kinds == {
        "AdmissionInfo", "DischargeSheet", "EmergencySheet", "AcpRecord", "DailyCareNote"}
    assert MATRIX.of("care-worker").labels == {"general", "medication", "care"}
    assert MATRIX.of("astronaut").read == frozenset()  # unknown professions get nothing


def edited_schemas(tmp_path: Path, change: Any) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    data = json.loads((copy / "access" / "permissions.json").read_text())
    change(data)
    (copy / "access" / "permissions.json").write_text(json.dumps(data, ensure_ascii=False))
    return copy


def test_a_changed_matrix_changes_decisions_without_code(tmp_path: Path) -> None:
    def show_acp_to_care_workers(data: dict[str, Any]) -> None:
        data["professions"]["care-worker"]["labels"].append("acp")

    changed = load_matrix(edited_schemas(tmp_path, show_acp_to_care_workers))
    request = Request("QuestionnaireResponse", Action.READ, "DailyCareNote")
    before = decide(MATRIX, user("care-worker"), facts(member()), request, now=NOW)
    after = decide(changed, user("care-worker"), facts(member()), request, now=NOW)
    assert "acp" not in before.labels and "acp" in after.labels


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d["professions"]["nurse"]["labels"].append("secret"), "professions.nurse.labels"),
    (lambda d: d["professions"].pop("clerk"), "missing ['clerk']"),
    (lambda d: d["professions"].update(wizard=d["professions"]["clerk"]), "unknown ['wizard']"),
    (lambda d: d["professions"]["nurse"]["read"].append("@nowhere"), "unknown group '@nowhere'"),
    (lambda d: d["groups"]["team"].append("Spaceship"), "groups.team"),
    (lambda d: d["break_glass"].update(hours=0), "break_glass.hours"),
    (lambda d: d["team"]["managers"].append("captain"), "team.managers"),
    (lambda d: d["professions"]["nurse"].update(colour="blue"), "professions.nurse.colour"),
])
def test_a_broken_matrix_is_refused_naming_the_entry(tmp_path: Path, change: Any, named: str) -> None:
    with pytest.raises(MatrixError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_matrix(edited_schemas(tmp_path, change))


# Decisions ----------------------------------------------------------------------------------------------------

MEMBERSHIPS = {
    "none": (),
    "practitioner": (member(),),
    "organization": (member("organization", ORG),),
    "ended": (member(end=NOW - timedelta(minutes=1)),),
    "unapproved": (member(approved=False),),
}
CONSENTS = {"active": ConsentState(active=True), "none": ConsentState(active=False),
            "excludes-org": ConsentState(active=True, excluded_organizations=frozenset({ORG}))}
CASES = list(itertools.product(sorted(RAW["professions"]), MEMBERSHIPS, CONSENTS, SUPPORTED, list(Action)))


@pytest.mark.parametrize("profession", sorted(RAW["professions"]))
def test_the_generated_matrix(profession: str) -> None:
    """Every membership × consent × resource kind × action for one profession (CASES holds them all)."""
    checked = 0
    for _, membership, consent, kind, action in (case for case in CASES if case[0] == profession):
        found = decide(MATRIX, user(profession), facts(*MEMBERSHIPS[membership], consent=CONSENTS[consent]),
                       Request(kind, action), now=NOW)
        allowed, basis = expected(profession, membership, consent, kind, action)
        assert found.allowed == allowed, (membership, consent, kind, action, found.reason)
        assert (found.basis.value if found.basis else None) == basis, (membership, consent, kind, action)
        if not allowed:
            assert found.hidden == (membership in ("none", "ended", "unapproved"))  # strangers learn nothing
        checked += 1
    assert checked == len(MEMBERSHIPS) * len(CONSENTS) * len(SUPPORTED) * len(Action)


def test_sheet_kinds_and_labels_follow_the_profession_and_the_consent() -> None:
    read = Request("QuestionnaireResponse", Action.READ, "AcpRecord")
    assert not decide(MATRIX, user("care-worker"), facts(member()), read, now=NOW).allowed
    physician = decide(MATRIX, user("physician"), facts(member()), read, now=NOW)
    assert physician.allowed and physician.labels == MATRIX.labels
    withheld = ConsentState(active=True, withheld_labels=frozenset({"mental-health"}))
    assert "mental-health" not in decide(MATRIX, user("physician"), facts(member(), consent=withheld), read,
                                         now=NOW).labels
    write = Request("QuestionnaireResponse", Action.CREATE, "DischargeSheet")
    assert decide(MATRIX, user("msw"), facts(member()), write, now=NOW).allowed
    assert not decide(MATRIX, user("pharmacist"), facts(member()), write, now=NOW).allowed


def test_consent_can_be_off_for_a_network() -> None:
    found = decide(MATRIX, user("nurse"), facts(member(), consent=CONSENTS["none"]), Request("Patient", Action.READ),
                   now=NOW, consent_required=False)
    assert found.allowed and found.basis is Basis.TEAM


def test_another_network_is_not_found() -> None:
    found = decide(MATRIX, user("physician", network="net-b"), facts(member()), Request("Patient", Action.READ),
                   now=NOW)
    assert not found.allowed and found.hidden


def test_break_the_glass_opens_the_emergency_sheet_only_read_only_and_for_a_while() -> None:
    until = NOW + timedelta(hours=MATRIX.break_glass.hours)
    ems = user("ems", subject="crew-1", organization="fire-1")
    emergency = Request("QuestionnaireResponse", Action.READ, "EmergencySheet")
    granted = decide(MATRIX, ems, facts(glass=until), emergency, now=NOW)
    assert granted.allowed and granted.basis is Basis.BREAK_GLASS and "acp" in granted.labels
    for other in (Request("QuestionnaireResponse", Action.READ, "DischargeSheet"), Request("Communication",
                  Action.READ), Request("QuestionnaireResponse", Action.CREATE, "EmergencySheet")):
        assert not decide(MATRIX, ems, facts(glass=until), other, now=NOW).allowed, other
    assert not decide(MATRIX, ems, facts(glass=until), emergency, now=until).allowed  # expired
    assert not decide(MATRIX, ems, facts(), emergency, now=NOW).allowed  # no grant
    care_worker = user("care-worker", subject="cw-9", organization="org-9")
    assert not decide(MATRIX, care_worker, facts(glass=until), emergency, now=NOW).allowed  # not a named profession


@pytest.mark.parametrize(("scopes", "allowed", "denied"), [
    (["system/Patient.rs"], [("Patient", Action.READ), ("Patient", Action.SEARCH)],
     [("Patient", Action.CREATE), ("Observation", Action.READ)]),
    (["system/QuestionnaireResponse.cruds"], [("QuestionnaireResponse", a) for a in Action],
     [("Patient", Action.READ)]),
    (["system/*.r"], [("Patient", Action.READ), ("Task", Action.READ)], [("Task", Action.UPDATE)]),
    (["system/Patient.read", "system/Task.write"], [("Patient", Action.SEARCH), ("Task", Action.CREATE)],
     [("Patient", Action.UPDATE), ("Task", Action.READ)]),
    (["user/Patient.rs", "patient/*.cruds"], [], [("Patient", Action.READ)]),
])
def test_system_clients_act_within_their_scopes(scopes: list[str], allowed: list[tuple[str, Action]],
                                                denied: list[tuple[str, Action]]) -> None:
    team = facts(member("organization", ORG))
    for kind, action in allowed:
        assert decide(MATRIX, client(*scopes), team, Request(kind, action), now=NOW).allowed, (kind, action)
    for kind, action in denied:
        assert not decide(MATRIX, client(*scopes), team, Request(kind, action), now=NOW).allowed, (kind, action)


def test_system_clients_only_for_patients_of_their_organisation() -> None:
    outside = decide(MATRIX, client("system/*.cruds", organization="org-x"), facts(member("organization", ORG)),
                     Request("Patient", Action.READ), now=NOW)
    assert not outside.allowed and outside.hidden


def test_the_check_command_accepts_the_matrix_and_names_a_broken_entry(tmp_path: Path) -> None:
    from tests.test_cli import run

    good = run(["access", "check-matrix"], tmp_path / "data")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "is valid" in good.stdout and "care-worker" in good.stdout

    def unknown_label(data: dict[str, Any]) -> None:
        data["professions"]["clerk"]["labels"].append("gossip")

    bad = run(["access", "check-matrix", str(edited_schemas(tmp_path, unknown_label))], tmp_path / "data")
    assert bad.returncode == 1 and "professions.clerk.labels" in bad.stdout and "gossip" in bad.stdout
