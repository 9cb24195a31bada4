"""One access decision, from data: who asks (the token), what they ask for, and the patient's team, consent and
break-the-glass grants. A pure function, so the same rules are easy to test exhaustively and to explain.

The rules, in the order they are applied (DESIGN.md section 6):

1. Network isolation: nothing crosses networks — answered as "not found", so existence does not leak.
2. System clients act only within their SMART scopes (``system/<Type>.<cruds>``) and only for patients whose team
   includes their organisation.
3. Users act within their profession's row of the permission matrix (resource kind, sheet kind, action).
4. Team membership: the user, or their organisation, is an active participant of the patient's care team — every
   approval in, inside its period.
5. Consent: with the network's ``consent_required`` on, sharing rests on an active Consent that does not exclude
   the reader's organisation; without one an organisation sees only what its own members wrote.
6. Break-the-glass: an unexpired grant opens what the matrix's break-glass rule names, read only, whatever 3-5 say.

Labels visible in the answer are the profession's (or the break-glass rule's), less those the consent withholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.kit.tokens import Principal
from services.share.access.matrix import Matrix


class Action(StrEnum):
    CREATE = "c"
    READ = "r"
    UPDATE = "u"
    DELETE = "d"
    SEARCH = "s"

    @property
    def writes(self) -> bool:
        return self in (Action.CREATE, Action.UPDATE, Action.DELETE)


@dataclass(frozen=True)
class Participant:
    """A row of the patient's care team: a user (``practitioner``) or a whole ``organization``."""

    kind: str  # "practitioner" | "organization"
    member: str  # a user id, or an organisation id
    role: str  # care-team-role code
    start: datetime | None
    end: datetime | None
    approved: bool  # every approval the network requires is in

    def active(self, now: datetime) -> bool:
        return self.approved and within(self.start, self.end, now)


def within(start: datetime | None, end: datetime | None, now: datetime) -> bool:
    """Whether ``now`` lies in the period [start, end), either end open when None."""
    return (start is None or start <= now) and (end is None or now < end)


@dataclass(frozen=True)
class ConsentState:
    """The patient's consent to sharing within the team, all their active Consents together."""

    active: bool
    organizations: frozenset[str] | None = None  # None: every organisation of the team; else these only
    excluded_organizations: frozenset[str] = frozenset()
    withheld_labels: frozenset[str] = frozenset()

    def covers(self, organization: str) -> bool:
        return self.active and organization not in self.excluded_organizations and (
            self.organizations is None or organization in self.organizations)


NO_CONSENT = ConsentState(active=False)


@dataclass(frozen=True)
class PatientFacts:
    network_id: str
    patient_id: str
    team: tuple[Participant, ...] = ()
    consent: ConsentState = NO_CONSENT
    break_glass_until: datetime | None = None  # this caller's unexpired grant, if any


@dataclass(frozen=True)
class Request:
    resource_type: str
    action: Action
    sheet_kind: str | None = None  # the Questionnaire name of a sheet (QuestionnaireResponse)


class Basis(StrEnum):
    TEAM = "team"  # a member of the patient's team, sharing under consent (or none required)
    OWN_ORGANIZATION = "own-organization"  # no consent: only what the reader's organisation wrote
    BREAK_GLASS = "break-glass"
    SYSTEM = "system"
    DIRECTORY = "directory"  # a resource of no patient (an organisation, a template): the profession's row alone
    ADMINISTRATION = "administration"  # a network administrator managing a team or identifying a patient


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    basis: Basis | None = None
    labels: frozenset[str] = field(default_factory=frozenset)
    hidden: bool = False  # denied as "not found": the caller may not learn the patient exists

    @property
    def only_own_organization(self) -> bool:
        return self.basis is Basis.OWN_ORGANIZATION


def deny(reason: str, *, hidden: bool = False) -> Decision:
    return Decision(False, reason, hidden=hidden)


def decide(matrix: Matrix, principal: Principal, facts: PatientFacts, request: Request, *, now: datetime,
           consent_required: bool = True) -> Decision:
    if principal.network != facts.network_id:
        return deny("another network's patient", hidden=True)
    if principal.kind == "system":
        return _system(principal, facts, request, now)
    permissions = matrix.of(principal.profession)
    glass = _break_glass(matrix, principal, facts, request, now)
    member = _member(principal, facts, now)
    if member is None:
        return glass or deny("not a participant of this patient's care team", hidden=True)
    kinds = permissions.write if request.action.writes else permissions.read
    sheets = permissions.sheets_write if request.action.writes else permissions.sheets_read
    verb = request.action.name.lower()
    if request.resource_type not in kinds:
        return glass or deny(f"a {principal.profession} may not {verb} {request.resource_type}")
    if request.sheet_kind is not None and request.sheet_kind not in sheets:
        return glass or deny(f"a {principal.profession} may not {verb} {request.sheet_kind} sheets")
    consent = facts.consent
    if consent_required and not consent.covers(principal.organization):
        why = "no active consent" if not consent.active else "the consent does not cover this organisation"
        return Decision(True, f"{why}: only what this organisation wrote", Basis.OWN_ORGANIZATION,
                        permissions.labels)
    withheld = consent.withheld_labels if consent.active else frozenset()
    return Decision(True, f"{member.role} in the care team", Basis.TEAM, permissions.labels - withheld)


def _member(principal: Principal, facts: PatientFacts, now: datetime) -> Participant | None:
    for participant in facts.team:
        if not participant.active(now):
            continue
        if participant.kind == "practitioner" and participant.member == principal.subject:
            return participant
        if participant.kind == "organization" and participant.member == principal.organization:
            return participant
    return None


def _break_glass(matrix: Matrix, principal: Principal, facts: PatientFacts, request: Request,
                 now: datetime) -> Decision | None:
    rule = matrix.break_glass
    if facts.break_glass_until is None or facts.break_glass_until <= now:
        return None
    if principal.profession not in rule.professions or request.action.writes:
        return None
    if request.resource_type not in rule.read or (request.sheet_kind is not None and request.sheet_kind
                                                   not in rule.sheets):
        return None
    return Decision(True, "break-the-glass access", Basis.BREAK_GLASS, rule.labels)


def _system(principal: Principal, facts: PatientFacts, request: Request, now: datetime) -> Decision:
    if not scope_allows(principal.scopes, request.resource_type, request.action):
        return deny(f"no scope for {request.resource_type}.{request.action.value}")
    if not any(p.kind == "organization" and p.member == principal.organization and p.active(now) for p in facts.team):
        return deny("the client's organisation is not in this patient's care team", hidden=True)
    return Decision(True, "system client of a team organisation", Basis.SYSTEM, frozenset({"*"}))


def scope_allows(scopes: list[str], resource_type: str, action: Action) -> bool:
    """SMART v2 ``system/<Type|*>.<cruds>`` (v1 ``.read``/``.write``/``.*`` understood too)."""
    for scope in scopes:
        context, _, rest = scope.partition("/")
        kind, _, permissions = rest.partition(".")
        if context != "system" or kind not in (resource_type, "*"):
            continue
        letters = permissions.split("?", 1)[0]
        if letters == "*" or (set(letters) <= set("cruds") and action.value in letters):
            return True
        if (letters == "read" and not action.writes) or (letters == "write" and action.writes):
            return True
    return False
