"""The sheet rules, applied by the store on every write of a Questionnaire or QuestionnaireResponse — whichever
path it comes by (create, update, a batch or transaction entry) — in the write's own transaction.

Before the write: a sheet is checked against the exact template version it names (registry.py, validation.py)
and its lifecycle (lifecycle.py), its section labels become the template's, and a daily note with out-of-range
vitals is flagged urgent; a Questionnaire a network registers is checked like a shipped template. After the
write: the projections the rules read (models.py) and the scene rules (scenes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.kit.codes import SECTION_LABEL_EXTENSION, SENSITIVITY_LABEL
from services.kit.db import TransactionRequired, without_transaction
from services.kit.errors import Conflict, Forbidden, NotFound
from services.share.access.layout import sheet_kind
from services.share.sheets import records, scenes
from services.share.sheets.lifecycle import DRAFTS, SHARED, SheetInvalid, check_transition, sheet_issue
from services.share.sheets.models import SheetRecord, SheetTemplate
from services.share.sheets.records import Member, PatientSheets, SheetState
from services.share.sheets.registry import Template, TemplateInvalid, TemplateRegistry
from services.share.sheets.validation import validate_response
from services.share.sheets.vital_ranges import VitalRanges
from services.share.sheets.vitals import is_urgent, observations_from_note
from services.share.store.models import ResourceHead
from services.share.store.statements import Beside, NewRows, statements

if TYPE_CHECKING:
    from services.share.store.service import Caller, ResourceStore, Stored

# Kinds of which a patient has one current sheet: a second is an amendment of the first, not a rival.
ONE_CURRENT = frozenset({"EmergencySheet", "AcpRecord"})


@dataclass
class Change:
    """What the rules learnt of a write before it, for after it."""

    template: Template | None = None
    before: SheetState | None = None  # the sheet's record as it stood (None: a new sheet)
    previous: dict[str, Any] | None = None  # the previous version's body, where a scene rule compares


class SheetRules:
    def __init__(self, registry: TemplateRegistry, ranges: VitalRanges,
                 review_days: Callable[[str], int] | None = None) -> None:
        self.registry = registry
        self.ranges = ranges
        self.store: ResourceStore | None = None  # set by the store that applies these rules
        # network id -> days after which an emergency sheet wants review (the network's policy)
        self.review_days = review_days or (lambda network_id: 90)

    @classmethod
    def load(cls, schemas_dir: Path, review_days: Callable[[str], int] | None = None) -> SheetRules:
        return cls(TemplateRegistry.load(schemas_dir), VitalRanges.load(schemas_dir / "sheets" / "vital-ranges.json"),
                   review_days)

    # Before ------------------------------------------------------------------------------------------

    def before_write(self, db: Session, caller: Caller, resource_type: str, resource_id: str,
                     body: dict[str, Any], existing: bool) -> Change:
        if resource_type == "Questionnaire":
            if without_transaction(db):
                raise TransactionRequired("a template is projected beside its write")
            self._check_template(db, caller, resource_id, body, existing)
            return Change()
        before = records.state(db, resource_id) if existing else None
        if before is not None and before.status in DRAFTS and caller.principal is not None \
                and before.author_organization != caller.organization:
            raise NotFound(f"QuestionnaireResponse/{resource_id} is not known")  # a draft: its author's alone
        check_transition(before.status if before else None, body.get("status"))
        template = self._template(db, caller, body)
        if without_transaction(db) and not self._alone(before, sheet_kind(body) or template.name, body.get("status")):
            raise TransactionRequired("this sheet's rules write more than its record and Tasks")  # before any write
        if before is not None and before.kind != template.name:
            raise SheetInvalid([sheet_issue("wrong-questionnaire", "記録の様式の種類は変えられません",
                                            f"a {before.kind} cannot become a {template.name}",
                                            "QuestionnaireResponse.questionnaire")])
        self._stamp_labels(body, template)
        issues = [issue for issue in validate_response(body, template.body)
                  if issue.code != "required" or body.get("status") in SHARED]  # a draft may be unfinished
        if issues:
            raise SheetInvalid(issues)
        if "author" not in body and caller.principal is not None and caller.principal.kind == "user":
            body["author"] = {"reference": f"Practitioner/{caller.principal.subject}"}
        if template.name == "DailyCareNote" and body.get("status") in SHARED and is_urgent(body, self.ranges):
            meta = body.setdefault("meta", {})
            meta["tag"] = [*[t for t in meta.get("tag") or [] if t.get("system") != scenes.SHEET_FLAG], scenes.URGENT]
        previous = self._previous(db, caller, resource_id) if before is not None \
            and template.name in scenes.SUMMARISED and body.get("status") in SHARED else None
        return Change(template, before, previous)

    @staticmethod
    def _alone(before: SheetState | None, kind: str, status: Any) -> bool:
        """Whether a write's rules write only its record and Tasks — and, for a sheet that changes what an
        emergency sheet summarises, a review Task only if one is wanted (Beside.unless) — so that all of it can be
        one statement (``beside``): a new sheet that is not the patient's one current emergency sheet or ACP record
        and not a daily note's vitals. The rest run in a transaction (after_write)."""
        shared = status in SHARED
        return before is None and not (shared and (kind in ONE_CURRENT or kind == "DailyCareNote"))

    def _template(self, db: Session, caller: Caller, body: dict[str, Any]) -> Template:
        canonical = body.get("questionnaire")
        if not isinstance(canonical, str) or "|" not in canonical:
            raise SheetInvalid([sheet_issue(
                "wrong-questionnaire", "記録には様式とその版（url|version）を指定してください",
                "a sheet names its template with its version: questionnaire = url|version",
                "QuestionnaireResponse.questionnaire")])
        template = self.registry.find(db, caller.network_id, canonical)
        if template is None:
            raise SheetInvalid([sheet_issue(
                "wrong-questionnaire", f"様式 {canonical} は登録されていません",
                f"no active template {canonical} is registered in this network (GET /fhir/Questionnaire)",
                "QuestionnaireResponse.questionnaire")])
        return template

    @staticmethod
    def _stamp_labels(body: dict[str, Any], template: Template) -> None:
        """Each top-level section the template defines gets the template's label, whatever the client sent
        (redaction reads it: a client must not choose what other professions see)."""
        for item in body.get("item") or []:
            if isinstance(item, dict) and item.get("linkId") in template.labels:
                kept = [e for e in item.get("extension") or []
                        if not (isinstance(e, dict) and e.get("url") == SECTION_LABEL_EXTENSION)]
                label = {"url": SECTION_LABEL_EXTENSION,
                         "valueCoding": {"system": SENSITIVITY_LABEL, "code": template.labels[item["linkId"]]}}
                item["extension"] = [*kept, label]

    def _previous(self, db: Session, caller: Caller, resource_id: str) -> dict[str, Any] | None:
        row = statements(db).current(db, caller.network_id, "QuestionnaireResponse", resource_id)
        if row is None or row.deleted:
            return None
        found: dict[str, Any] = orjson.loads(self._store.open(db, row).body)
        return found

    def _check_template(self, db: Session, caller: Caller, resource_id: str, body: dict[str, Any],
                        existing: bool) -> None:
        """A network's own template: checked as shipped ones are; a shipped one is the server's alone; a
        version in use changes only its status (sheets were checked against its items)."""
        if caller.principal is None:
            return  # the server installing a shipped template
        row = db.get(SheetTemplate, resource_id) if existing else None
        if row is not None and row.shipped:
            raise Forbidden("shipped templates are not changed; register a variant with its own url or version",
                            code="shipped_template")
        problems = self.registry.problems(body)
        if problems:
            shown = problems[:20]
            raise TemplateInvalid("; ".join(f"[{p.link_id}] {p.message}" if p.link_id else p.message
                                            for p in shown), expression=["Questionnaire"])
        taken = db.scalar(select(SheetTemplate.resource_id).where(
            SheetTemplate.network_id == caller.network_id, SheetTemplate.url == body.get("url"),
            SheetTemplate.version == str(body.get("version")), SheetTemplate.resource_id != resource_id))
        if taken is not None:
            raise Conflict(f"{body.get('url')}|{body.get('version')} is registered already (Questionnaire/{taken}); "
                           "a changed template is a new version", code="template_exists")
        if row is not None and row.status == "active" and _items(row.body) != body.get("item"):
            raise Conflict("sheets were checked against this template version's items; register a new version",
                           code="template_in_use")

    # After -------------------------------------------------------------------------------------------

    def after_write(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any], patient_id: str | None,
                    change: Change) -> None:
        if stored.resource_type == "Questionnaire":
            self.registry.project(db, caller.network_id, stored.resource_id, body)
            return
        if change.template is None or not patient_id:
            return
        status = body.get("status")
        # Read before _record updates the sheet's row (change.before) to this write.
        became_shared = status in SHARED and (change.before is None or change.before.status not in SHARED)
        kind = sheet_kind(body) or change.template.name
        summarised = _summarises(kind, status, change, body)
        if kind in ONE_CURRENT and became_shared:
            scenes.lock_patient(db, patient_id)  # before the patient's current sheets are read
        tasks = self._acknowledgements(db, caller, stored, body, patient_id) \
            if kind == "DischargeSheet" and became_shared else []
        # The sheet's row, its Tasks and what the rules below read of its patient: one round trip.
        record, sheets = self._record(db, caller, stored, body, patient_id, change,
                                      with_context=(kind in ONE_CURRENT and became_shared) or summarised,
                                      beside=self._store.prepare_created(db, scenes.server(caller), tasks))
        if sheets is not None and kind in ONE_CURRENT and became_shared:
            self._only_current(sheets, record)
        if sheets is not None and summarised:
            self.raise_review(db, caller, patient_id, scenes.changed_reason(kind), sheets)
        if kind == "EmergencySheet" and status == "amended" and record.review_task:
            self._close_review(db, caller, record)
        if kind == "DailyCareNote" and status in SHARED:
            self._record_vitals(db, caller, stored, body, change.template)

    def beside(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any], patient_id: str,
               change: Change) -> Beside:
        """What after_write would write of a new sheet that ``_alone`` let through, for the sheet's own statement
        (ResourceStore.create, without a transaction): its record and the Tasks of a shared discharge sheet. One
        that summarises into an emergency sheet is written only while no review is wanted of the patient's
        current one; when one is, nothing is, and the share runs again in a transaction (raise_review)."""
        record = self._state(caller, stored, body, patient_id, change)
        status = body.get("status")
        tasks = self._acknowledgements(db, caller, stored, body, patient_id) \
            if record.kind == "DischargeSheet" and status in SHARED else []
        summarised = _summarises(record.kind, status, change, body)
        return Beside(self._store.prepare_created(db, scenes.server(caller), tasks), records.insert_gated(db, record),
                      records.no_review_wanted(db, caller.network_id, patient_id) if summarised else None)

    def _record(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any], patient_id: str,
                change: Change, with_context: bool, beside: list[NewRows]) -> tuple[SheetState, PatientSheets | None]:
        record = self._state(caller, stored, body, patient_id, change)
        return record, records.write(db, record, new=change.before is None, with_context=with_context,
                                     beside=beside)

    @staticmethod
    def _state(caller: Caller, stored: Stored, body: dict[str, Any], patient_id: str, change: Change) -> SheetState:
        """The sheet's ``sheet_records`` row as this write leaves it."""
        assert change.template is not None
        record = change.before or SheetState(stored.resource_id, caller.network_id, patient_id, "", "", "", 0,
                                             caller.organization, stored.last_updated)
        record.kind = sheet_kind(body) or change.template.name
        record.template = str(body.get("questionnaire"))
        record.status = str(body.get("status"))
        record.version = stored.version
        record.updated_at = stored.last_updated
        if record.kind == "EmergencySheet":
            record.reviewed_at = scenes.reviewed_at(body) or stored.last_updated
        return record

    @staticmethod
    def _only_current(sheets: PatientSheets, record: SheetState) -> None:
        other = next((s for s in sheets.current.get(record.kind, []) if s.resource_id != record.resource_id), None)
        if other is not None:
            raise Conflict(f"this patient's current {record.kind} is QuestionnaireResponse/{other.resource_id}; "
                           "amend it (PUT with status amended) instead of sharing a second one",
                           code="current_sheet_exists")

    def _acknowledgements(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any],
                          patient_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """The Tasks asking the care manager and the primary physician to acknowledge a shared discharge sheet."""
        team = self._store.gate.team_read(db, patient_id) if self._store.gate is not None else None
        members = [Member(p.kind, p.member, p.role, p.start, p.end) for p in team if p.approved] \
            if team is not None else records.context(db, caller.network_id, patient_id).members
        tasks = scenes.acknowledgement_tasks(members, stored.resource_id, patient_id, body, caller.organization)
        # A new sheet's tasks are new (their ids derive from its id); a draft shared later is checked.
        return [("Task", task_id, task) for task_id, task in tasks
                if stored.version == 1 or db.get(ResourceHead, ("Task", task_id)) is None]

    def raise_review(self, db: Session, caller: Caller, patient_id: str, reason: str,
                     sheets: PatientSheets | None = None) -> str | None:
        """A review Task for the patient's current emergency sheet, unless one is open; its id, if raised."""
        sheets = sheets or records.context(db, caller.network_id, patient_id)
        record = next(iter(sheets.current.get("EmergencySheet", [])), None)
        if record is None or record.review_task:
            return None
        task_id = scenes.derived_id(record.resource_id, "review", str(record.version), reason[:40])
        if db.get(ResourceHead, ("Task", task_id)) is None:
            task = scenes.review_task(sheets.members, record.resource_id, patient_id, reason, caller.organization)
            self._store.create(db, scenes.server(caller), "Task", task, resource_id=task_id)
        records.set_review_task(db, record.resource_id, task_id)
        record.review_task = task_id
        return task_id

    def raise_overdue_review(self, db: Session, caller: Caller, patient_id: str,
                             now: datetime | None = None) -> str | None:
        """The review Task of a patient's emergency sheet that is older than the network's period."""
        record = records.current(db, caller.network_id, patient_id, "EmergencySheet")
        days = self.review_days(caller.network_id)
        if record is None or not scenes.review_due(record, days, now or datetime.now(UTC)):
            return None
        return self.raise_review(db, caller, patient_id, scenes.overdue_reason(days))

    def _close_review(self, db: Session, caller: Caller, record: SheetState) -> None:
        """An amended emergency sheet is the review its open Task asked for."""
        row = statements(db).current(db, caller.network_id, "Task", record.review_task)
        if row is not None and not row.deleted:
            task = orjson.loads(self._store.open(db, row).body)
            if task.get("status") not in ("completed", "cancelled"):
                task["status"] = "completed"
                task["output"] = [{"type": {"text": "見直し後の記録 / the reviewed sheet"},
                                   "valueReference": {"reference": f"QuestionnaireResponse/{record.resource_id}"
                                                                   f"/_history/{record.version}"}}]
                self._store.update(db, scenes.server(caller), "Task", record.review_task, task, None)
        records.set_review_task(db, record.resource_id, "")
        record.review_task = ""

    def _record_vitals(self, db: Session, caller: Caller, stored: Stored, body: dict[str, Any],
                       template: Template) -> None:
        reference = f"QuestionnaireResponse/{stored.resource_id}"
        for observation in observations_from_note(body, template.body, note_reference=reference,
                                                  ranges=self.ranges):
            key = next((i.get("value") for i in observation.get("identifier") or [] if i.get("value")), None)
            observation_id = scenes.derived_id(stored.resource_id, "vital", str(key or observation["code"]))
            if db.get(ResourceHead, ("Observation", observation_id)) is None:
                self._store.create(db, scenes.server(caller), "Observation", observation, resource_id=observation_id)
            else:
                self._store.update(db, scenes.server(caller), "Observation", observation_id, observation, None)

    def deleted(self, db: Session, caller: Caller, resource_type: str, resource_id: str) -> None:
        if resource_type == "Questionnaire":
            row = db.get(SheetTemplate, resource_id)
            if row is not None and row.shipped and caller.principal is not None:
                raise Forbidden("shipped templates are not deleted; retire a variant instead", code="shipped_template")
            self.registry.project(db, caller.network_id, resource_id, None)
        elif resource_type == "QuestionnaireResponse":
            before = records.state(db, resource_id)
            if before is not None and before.status in DRAFTS and caller.principal is not None \
                    and before.author_organization != caller.organization:
                raise NotFound(f"QuestionnaireResponse/{resource_id} is not known")  # a draft: its author's alone
            db.execute(delete(SheetRecord).where(SheetRecord.resource_id == resource_id))

    @property
    def _store(self) -> ResourceStore:
        assert self.store is not None, "SheetRules.store is set by the ResourceStore that applies them"
        return self.store


def _summarises(kind: str, status: Any, change: Change, body: dict[str, Any]) -> bool:
    """Whether a shared sheet changes what the patient's emergency sheet summarises (a review is then wanted)."""
    return kind in scenes.SUMMARISED and status in SHARED and scenes.summarised_change(kind, change.previous, body)


def _items(raw: bytes) -> Any:
    return orjson.loads(raw).get("item")
