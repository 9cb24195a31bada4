"""The access decision (decision.py), applied wherever the store reads or writes a resource for a caller.

The store asks the gate before it serves or changes anything (services/share/store/service.py), so every path —
read, vread, search and its ``_include``s, history, create, update, delete, batch entries, Binary content — passes
the same rules. What each decision saw (the patients served, what was withheld, a refusal) is noted on the
session (``Seen``) for the one audit record the request leaves (services/share/fhir/auditing.py).

Refusals: a patient the caller may not know of, and another network's resources, answer 404 like a missing
one; a team member asking for more than their profession's row answers 403.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import ColumnElement, and_, or_, select, union_all
from sqlalchemy.orm import Session

from services.kit.codes import REDACTED, SENSITIVITY_LABEL
from services.kit.errors import BadRequest, Forbidden, NotFound
from services.kit.tokens import Principal
from services.share.access.decision import (
    Action,
    Basis,
    Decision,
    Participant,
    PatientFacts,
    Request,
    decide,
    deny,
    scope_allows,
)
from services.share.access.layout import DRAFT_MARK, marker, parsed_layout, section_label, sheet_kind
from services.share.access.matrix import Matrix
from services.share.access.models import BreakGlassGrant, TeamParticipant
from services.share.access.policy import NetworkPolicies
from services.share.access.projection import FACTS_CACHE, facts_from_rows, many_patient_facts
from services.share.store.models import ResourceHead
from services.share.store.types import ADMINISTRATORS_ONLY, COMPARTMENT_ELEMENT

# Session.info entry: what this session's decisions saw, for the interaction's audit record.
SEEN = "renkei.access.seen"
# Resource types a network administrator handles for any patient of the network: managing care teams and
# identifying the patient; their clinical content stays with the team.
_ADMINISTERED = {"CareTeam": frozenset(Action), "Patient": frozenset({Action.READ, Action.SEARCH})}


class Row(Protocol):
    """What a decision needs of a stored version (ResourceVersion, VersionRow)."""

    @property
    def resource_type(self) -> str: ...
    @property
    def resource_id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def author_organization(self) -> str: ...


@dataclass
class Seen:
    """What one session's decisions saw: each patient served (and on which basis), refusals, withheld items."""

    patients: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # the reasons, in order
    refused_patients: set[str] = field(default_factory=set)  # patients of this network a refusal was about
    withheld_resources: int = 0
    withheld_sections: int = 0

    def served(self, patient_id: str, decision: Decision) -> None:
        if patient_id and decision.basis is not None:
            self.patients.setdefault(patient_id, decision.basis.value)


def seen(db: Session) -> Seen:
    found: Seen | None = db.info.get(SEEN)
    if found is None:
        found = db.info[SEEN] = Seen()
    return found


class Gate:
    def __init__(self, matrix: Matrix, policies: NetworkPolicies, *, enforce: bool = True) -> None:
        self.matrix = matrix
        self.policies = policies
        self.enforce = enforce  # off only for bench/access.py's baseline

    # Decisions --------------------------------------------------------------------------------------

    def facts(self, db: Session, principal: Principal, patient_ids: Iterable[str]) -> dict[str, PatientFacts]:
        """Each patient's team, consent and this caller's break-glass grant, read once per session."""
        cache: dict[str, PatientFacts] = db.info.setdefault(FACTS_CACHE, {})
        missing = [p for p in set(patient_ids) if p not in cache]
        if missing:
            subject = principal.subject if principal.kind == "user" else None
            cache.update(many_patient_facts(db, principal.network, missing, _now(), subject))
        return cache

    def team_read(self, db: Session, patient_id: str) -> tuple[Participant, ...] | None:
        """The patient's care team as this session's decisions read it (None: no decision read it yet) — for
        what the sheet rules ask of the team, without reading it twice."""
        found: PatientFacts | None = db.info.get(FACTS_CACHE, {}).get(patient_id)
        return found.team if found is not None else None

    def prime(self, db: Session, principal: Principal, patient_id: str, rows: list[tuple[Any, ...]]) -> None:
        """Facts of a patient read along with a page (Statements.timeline_with_facts): no query of their own."""
        cache: dict[str, PatientFacts] = db.info.setdefault(FACTS_CACHE, {})
        cache.update(facts_from_rows(principal.network, [patient_id], rows, _now()))

    def decision(self, db: Session, principal: Principal, resource_type: str, action: Action, patient_id: str,
                 sheet_kind: str | None = None) -> Decision:
        if resource_type in ADMINISTRATORS_ONLY and principal.is_admin:  # the audit trail (resources.py)
            return _ADMINISTRATOR
        if not patient_id or (resource_type == "Patient" and action is Action.CREATE):
            return self._unbound(principal, resource_type, action)  # a new patient has no team yet
        facts = self.facts(db, principal, [patient_id])[patient_id]
        return self._decide(principal, facts, resource_type, action, sheet_kind)

    def _decide(self, principal: Principal, facts: PatientFacts, resource_type: str, action: Action,
                sheet_kind: str | None) -> Decision:
        found = decide(self.matrix, principal, facts, Request(resource_type, action, sheet_kind), now=_now(),
                       consent_required=self.policies.current(principal.network).consent_required)
        changes_team = resource_type == "CareTeam" and action.writes
        if changes_team and found.allowed and found.basis is not Basis.SYSTEM and not self.manages(principal, facts):
            return deny("only the team's managers change a care team")
        administers = principal.is_admin and action in _ADMINISTERED.get(resource_type, ())
        if not found.allowed and administers and (not changes_team or self.matrix.network_admins_manage):
            return Decision(True, "network administrator", Basis.ADMINISTRATION, frozenset({"general"}))
        return found

    def manages(self, principal: Principal, facts: PatientFacts) -> bool:
        """Whether the caller may change the patient's team: an active participant in a managing role (the
        matrix's ``team.managers``), or a network administrator where the matrix lets them."""
        if principal.is_admin and self.matrix.network_admins_manage:
            return True
        now = _now()
        return any(p.active(now) and p.role in self.matrix.team_managers and p.kind == "practitioner"
                   and p.member == principal.subject for p in facts.team)

    def _unbound(self, principal: Principal, resource_type: str, action: Action) -> Decision:
        """A resource of no patient: a system client's scopes, or the profession's row of the matrix."""
        if principal.kind == "system":
            if scope_allows(principal.scopes, resource_type, action):
                return Decision(True, "system client within its scopes", Basis.SYSTEM, frozenset({"*"}))
            return deny(f"no scope for {resource_type}.{action.value}")
        if principal.is_admin and resource_type == "Questionnaire":  # a network registers its own templates
            return Decision(True, "network administrator", Basis.ADMINISTRATION, frozenset({"general"}))
        permissions = self.matrix.of(principal.profession)
        kinds = permissions.write if action.writes else permissions.read
        if resource_type in kinds:
            return Decision(True, f"a {principal.profession} may", Basis.DIRECTORY, permissions.labels)
        return deny(f"a {principal.profession} may not {action.name.lower()} {resource_type}")

    # Applying them ----------------------------------------------------------------------------------

    def check_write(self, db: Session, principal: Principal | None, resource_type: str, action: Action,
                    patient_id: str, body: dict[str, Any] | None,
                    current: Callable[[], Row | None] | None = None) -> None:
        """Refuse a create, update or delete the caller may not make (raises); ``current`` reads the version
        being changed, needed only when the caller may touch nothing but their own organisation's writing."""
        if principal is None or not self.enforce:
            return
        found = self.decision(db, principal, resource_type, action, patient_id, sheet_kind_of(resource_type, body))
        if found.allowed and found.only_own_organization and current is not None:
            existing = current()
            if existing is not None and existing.author_organization != principal.organization:
                found = deny("without the patient's consent, only what this organisation wrote", hidden=True)
        if not found.allowed and found.hidden and action is Action.CREATE:
            # The same answer as for a patient who does not exist (store.py): existence is not leaked.
            seen(db).refused.append(found.reason)
            raise BadRequest(f"Patient/{patient_id} is not known; the patient must exist first",
                             code="unknown_patient")
        if not found.allowed:
            self.refuse(db, found, resource_type, patient_id)
        seen(db).served(patient_id, found)

    def check_read(self, db: Session, principal: Principal | None, row: Row) -> Decision | None:
        """The decision to serve ``row`` (raises when refused); None: no restriction (the server's own work)."""
        if principal is None or not self.enforce:
            return None
        found = self._readable(principal, row, self.facts(db, principal, _patients([row])))
        if not found.allowed:
            self.refuse(db, found, f"{row.resource_type}/{row.resource_id}", row.patient_id)
        seen(db).served(row.patient_id, found)
        return found

    def readable(self, db: Session, principal: Principal | None, rows: list[Any]) -> list[Decision | None]:
        """For a page of rows (a search, a history, included resources): each one's decision, None where it is
        left out — silently, as if it did not match."""
        if principal is None or not self.enforce:
            return [_UNRESTRICTED] * len(rows)
        facts = self.facts(db, principal, _patients(rows))
        found: list[Decision | None] = []
        notes = seen(db)
        # A page holds many resources of few patients: one decision per patient and kind, then each row's author.
        decided: dict[tuple[str, str], Decision] = {}
        for row in rows:
            key = (row.patient_id, row.resource_type)
            decision = decided.get(key)
            if decision is None:
                decision = decided[key] = self._kind_decision(principal, row, facts)
            if decision.allowed and decision.only_own_organization \
                    and row.author_organization != principal.organization:
                decision = _NOT_OWN
            if decision.allowed and _foreign_draft(row, principal):
                decision = _DRAFT
            if decision.allowed:
                notes.served(row.patient_id, decision)
                found.append(decision)
            else:
                notes.withheld_resources += 1
                found.append(None)
        return found

    def may_read(self, principal: Principal, row: Row, facts: dict[str, PatientFacts]) -> bool:
        """Whether ``principal`` may read ``row`` now, from facts read beforehand (``many_patient_facts``: no query
        of its own) — what the event hub asks for every live connection an event might go to."""
        if not self.enforce:
            return True
        if row.patient_id and row.patient_id not in facts:
            return False
        return self._readable(principal, row, facts).allowed

    def _readable(self, principal: Principal, row: Row, facts: dict[str, PatientFacts]) -> Decision:
        found = self._kind_decision(principal, row, facts)
        if found.allowed and found.only_own_organization and row.author_organization != principal.organization:
            return _NOT_OWN
        if found.allowed and _foreign_draft(row, principal):
            return _DRAFT
        return found

    def _kind_decision(self, principal: Principal, row: Row, facts: dict[str, PatientFacts]) -> Decision:
        """The decision on reading this patient's resources of this kind (whoever wrote them), from ``facts``
        (which hold the row's patient)."""
        if row.resource_type in ADMINISTRATORS_ONLY and principal.is_admin:
            return _ADMINISTRATOR
        if not row.patient_id:
            return self._unbound(principal, row.resource_type, Action.READ)
        return self._decide(principal, facts[row.patient_id], row.resource_type, Action.READ, None)

    def shape(self, db: Session, principal: Principal | None, decision: Decision | None, resource_type: str,
              body: bytes, layout: bytes | None = None) -> bytes | None:
        """The body as this reader may see it: None if the sheet kind is not theirs, or the resource carries a
        label they may not see; sections whose label they may not see withheld, with a marker. A sheet is
        cut by its stored layout (layout.py); bodies with nothing to check are returned untouched, unparsed."""
        if principal is None or decision is None or not self.enforce or "*" in decision.labels:
            return body
        if resource_type != "QuestionnaireResponse" and b"urn:renkei:codesystem:sensitivity-label" not in body:
            return body
        sheets = (self.matrix.break_glass.sheets if decision.basis is Basis.BREAK_GLASS
                  else self.matrix.of(principal.profession).sheets_read)
        if layout is None:
            return self._shape_parsed(db, decision, sheets, resource_type, body)
        found = parsed_layout(layout)
        if found.kind is not None and found.kind in self.matrix.sheet_kinds and found.kind not in sheets:
            seen(db).withheld_resources += 1
            return None
        if b"urn:renkei:codesystem:sensitivity-label" in body[found.meta[0]:found.meta[1]] and not all(
                label in decision.labels for label in found.labels_of_resource(body)):
            seen(db).withheld_resources += 1
            return None
        shaped, withheld = found.withhold(body, decision.labels)
        seen(db).withheld_sections += withheld
        return shaped

    def _shape_parsed(self, db: Session, decision: Decision, sheets: frozenset[str], resource_type: str,
                      body: bytes) -> bytes | None:
        """``shape`` for a body without a layout (any other labelled resource): parsed, cut, serialised."""
        resource = orjson.loads(body)
        if resource_type == "QuestionnaireResponse":
            kind = sheet_kind(resource)
            if kind is not None and kind in self.matrix.sheet_kinds and kind not in sheets:
                seen(db).withheld_resources += 1
                return None
        if not _labels_visible(resource.get("meta"), decision.labels):
            seen(db).withheld_resources += 1
            return None
        if not isinstance(resource.get("item"), list):
            return body
        kept, withheld = _redact(resource["item"], decision.labels)
        if not withheld:
            return body
        seen(db).withheld_sections += withheld
        resource["item"] = kept
        meta = resource.setdefault("meta", {})
        meta["security"] = [*(meta.get("security") or []), REDACTED]
        return orjson.dumps(resource)

    def refuse(self, db: Session, decision: Decision, what: str, patient_id: str = "") -> None:
        """Raise the refusal; the audit record of the interaction notes it (services/share/fhir/auditing.py)."""
        notes = seen(db)
        notes.refused.append(decision.reason)
        if patient_id:
            notes.refused_patients.add(patient_id)
        if decision.hidden:
            raise NotFound(f"{what} is not known")
        raise Forbidden(f"{decision.reason}", code="access_denied")

    def search_scope(self, db: Session, principal: Principal, resource_type: str, patient_id: str | None
                     ) -> tuple[Decision | None, ColumnElement[bool] | None]:
        """How a search is confined. One patient's search is decided up front (a refusal answers an empty result,
        as for a patient who does not exist); a search across patients is confined in SQL to the patients whose
        team holds the caller, or for whom they hold a break-the-glass grant — each result is decided after."""
        if not self.enforce:
            return None, None
        if patient_id is not None:
            return self.decision(db, principal, resource_type, Action.SEARCH, patient_id), None
        if resource_type not in COMPARTMENT_ELEMENT and resource_type != "Patient":
            return None, None
        if principal.is_admin and Action.SEARCH in _ADMINISTERED.get(resource_type, ()):
            return None, None
        member = and_(TeamParticipant.kind == "organization", TeamParticipant.member_id == principal.organization)
        if principal.kind == "user":
            member = or_(member, and_(TeamParticipant.kind == "practitioner",
                                      TeamParticipant.member_id == principal.subject))
        teams = select(TeamParticipant.patient_id).where(
            TeamParticipant.network_id == principal.network, TeamParticipant.team_status == "active",
            TeamParticipant.approved.is_(True), member)
        grants = select(BreakGlassGrant.patient_id).where(
            BreakGlassGrant.network_id == principal.network, BreakGlassGrant.subject == principal.subject,
            BreakGlassGrant.expires_at > _now())
        return None, ResourceHead.patient_id.in_(union_all(teams, grants))

    def join_approvals(self, network_id: str) -> tuple[str, ...]:
        return self.policies.current(network_id).team_join_approvals


_UNRESTRICTED = Decision(True, "the server's own work", Basis.SYSTEM, frozenset({"*"}))
_ADMINISTRATOR = Decision(True, "network administrator", Basis.ADMINISTRATION, frozenset({"*"}))
_NOT_OWN = deny("without the patient's consent, only what this organisation wrote", hidden=True)
_DRAFT = deny("a draft sheet is its author's organisation's until it is shared", hidden=True)


def _foreign_draft(row: Any, principal: Principal) -> bool:
    """A sheet not yet shared (in-progress: its stored layout says so), written by another organisation."""
    layout = getattr(row, "layout", None)
    # The draft mark closes the stored layout (layout.py DRAFT_MARK): a byte comparison, not a parse, per row.
    return (layout is not None and layout.endswith(DRAFT_MARK) and row.resource_type == "QuestionnaireResponse"
            and row.author_organization != principal.organization)


def sheet_kind_of(resource_type: str, body: dict[str, Any] | None) -> str | None:
    return sheet_kind(body) if resource_type == "QuestionnaireResponse" else None


def _labels_visible(meta: Any, visible: frozenset[str]) -> bool:
    if not isinstance(meta, dict):
        return True
    return all(c.get("code") in visible for c in meta.get("security") or []
               if isinstance(c, dict) and c.get("system") == SENSITIVITY_LABEL)


def _redact(items: list[Any], visible: frozenset[str]) -> tuple[list[Any], int]:
    """Top-level sections whose label the reader may not see, replaced by a marker keeping only the linkId."""
    kept: list[Any] = []
    withheld = 0
    for item in items:
        label = section_label(item)
        if label is None or label in visible:
            kept.append(item)
        else:
            withheld += 1
            kept.append(orjson.loads(marker(label, item.get("linkId"))))
    return kept, withheld


def _patients(rows: Iterable[Any]) -> list[str]:
    return [row.patient_id for row in rows if row.patient_id]


def _now() -> datetime:
    return datetime.now(UTC)
