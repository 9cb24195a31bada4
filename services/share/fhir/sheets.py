"""The sheet operations, over the FHIR API (the rules themselves live in services/share/sheets/):

- ``GET  /fhir/QuestionnaireResponse/{id}/$document``: a shared sheet as a FHIR document Bundle (for a discharge
  sheet, shaped as a JP-CLINS discharge summary), as the caller may see it;
- ``GET  /fhir/QuestionnaireResponse/{id}/$diff?from=&to=``: what changed between two versions, by linkId
  (default: the previous version against the current one);
- ``GET  /fhir/Patient/{id}/$emergency-summary``: the current emergency sheet and the current ACP wishes as one
  compact document — what an ambulance crew or a break-the-glass reader opens first;
- ``POST /fhir/Task/{id}/$acknowledge``: the care manager or physician asked to acknowledge a sheet does so,
  optionally with a question back to its sender (a Communication);
- ``POST /fhir/Bundle/{id}/$discharge-draft``: a stored discharge-summary document (JP-CLINS) prefills a
  discharge-sheet draft for the caller's organisation;
- ``POST /fhir/Patient/{id}/$crew-report``: the ambulance crew adds its blocks (the call, what the crew found and
  did, where it takes the patient) to the current emergency sheet, and the team (and a receiving hospital of the
  network) is told in an urgent message.

Every read goes through the store, so access decisions, redaction and the audit apply as to any read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from services.kit.errors import BadRequest, Conflict, Forbidden, NotFound, RenkeiError
from services.kit.tokens import Principal
from services.share.access.decision import Action
from services.share.context import ShareContext
from services.share.fhir.auditing import Interaction
from services.share.fhir.negotiation import bounded_body, operation_parameters
from services.share.fhir.resources import caller_of, checked_id, in_transaction, resource_response
from services.share.fhir.responses import FhirResponse
from services.share.security.deps import Context, CurrentPrincipal
from services.share.sheets import diff, documents, inbound, records, scenes
from services.share.sheets.lifecycle import SHARED
from services.share.sheets.registry import Template
from services.share.sheets.rules import SheetRules
from services.share.store.service import Caller
from services.share.store.types import reference_target

router = APIRouter(prefix="/fhir", tags=["fhir"])
SHEET = "QuestionnaireResponse"
_OPEN_TASK = frozenset({"requested", "received", "accepted", "in-progress"})


class Unprocessable(RenkeiError):
    status_code = 422
    code = "unprocessable"


@router.get("/QuestionnaireResponse/{sheet_id}/$document", summary="A shared sheet as a FHIR document Bundle")
async def sheet_document(sheet_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(sheet_id)

    def work(db: Session) -> Response:
        item = ctx.store.read(db, caller_of(principal), SHEET, sheet_id)
        sheet = orjson.loads(item.body)
        if sheet.get("status") not in SHARED:
            raise Conflict(f"{SHEET}/{sheet_id} is {sheet.get('status')}: only a shared sheet (completed or "
                           "amended) is a document", code="not_shared")
        template = _template(ctx, db, principal, sheet)
        bundle = documents.sheet_document(sheet, template.body, sheet_id=sheet_id, version=item.version,
                                          patient=_patient(ctx, db, principal, sheet), base=ctx.settings.fhir_base,
                                          timestamp=_now())
        return FhirResponse(bundle)

    return await in_transaction(ctx, work, (principal, Interaction("R", "document", f"{SHEET}/{sheet_id}")))


@router.get("/QuestionnaireResponse/{sheet_id}/$diff", summary="What changed between two versions of a sheet")
async def sheet_diff(sheet_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(sheet_id)
    wanted = [request.query_params.get(name) for name in ("from", "to")]
    if any(value is not None and not value.isdigit() for value in wanted):
        raise BadRequest("'from' and 'to' are version numbers", code="invalid_parameters")

    def work(db: Session) -> Response:
        caller = caller_of(principal)
        current = ctx.store.read(db, caller, SHEET, sheet_id)
        to = int(wanted[1]) if wanted[1] else current.version
        since = int(wanted[0]) if wanted[0] else max(1, to - 1)
        older = ctx.store.vread(db, caller, SHEET, sheet_id, since)
        newer = current if to == current.version else ctx.store.vread(db, caller, SHEET, sheet_id, to)
        found = diff.changes(orjson.loads(older.body), orjson.loads(newer.body))
        return FhirResponse(diff.parameters(found, (since, to)))

    return await in_transaction(ctx, work, (principal, Interaction("R", "diff", f"{SHEET}/{sheet_id}")))


@router.get("/Patient/{patient_id}/$emergency-summary", summary="Emergency sheet and ACP wishes as one document")
async def emergency_summary(patient_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(patient_id)

    def work(db: Session) -> Response:
        caller = caller_of(principal)
        patient = orjson.loads(ctx.store.read(db, caller, "Patient", patient_id).body)
        sheets: dict[str, dict[str, Any]] = {}
        ids: dict[str, tuple[str, int]] = {}
        current = {kind: found[0] for kind, found in records.context(db, principal.network, patient_id)
                   .current.items()}
        templates: dict[str, dict[str, Any]] = {}
        for kind in ("EmergencySheet", "AcpRecord"):
            record = current.get(kind)
            if record is None:
                continue
            try:  # the ACP record may be beyond what this reader may see: then its section says it is withheld
                item = ctx.store.read(db, caller, SHEET, record.resource_id)
            except (Forbidden, NotFound):
                continue
            sheets[kind] = orjson.loads(item.body)
            ids[kind] = (record.resource_id, item.version)
            templates[kind] = _template(ctx, db, principal, sheets[kind]).body
        if "EmergencySheet" not in sheets:
            raise NotFound(f"Patient/{patient_id} has no current emergency sheet", code="no_emergency_sheet")
        _rules(ctx).raise_overdue_review(db, caller, patient_id)
        bundle = documents.emergency_summary(sheets.get("EmergencySheet"), sheets.get("AcpRecord"),
                                             templates=templates, patient=patient, ids=ids,
                                             base=ctx.settings.fhir_base, timestamp=_now())
        return FhirResponse(bundle)

    audit = (principal, Interaction("R", "emergency-summary", f"Patient/{patient_id}"))
    return await in_transaction(ctx, work, audit)


@router.post("/Task/{task_id}/$acknowledge", summary="Acknowledge a shared sheet, optionally asking a question")
async def acknowledge(task_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(task_id)
    question = operation_parameters(await bounded_body(request, 64 * 1024)).get("question")
    if question is not None and (not isinstance(question, str) or not question.strip() or len(question) > 2000):
        raise BadRequest("'question' is a text of 1 to 2,000 characters", code="invalid_parameters",
                         expression=["Parameters.parameter.where(name='question')"])

    def work(db: Session) -> Response:
        caller = caller_of(principal)
        task = orjson.loads(ctx.store.read(db, caller, "Task", task_id).body)
        codes = {c.get("code") for c in (task.get("code") or {}).get("coding") or [] if c.get("system")
                 == scenes.TASK_CODE}
        if "acknowledge" not in codes:
            raise Unprocessable(f"Task/{task_id} does not ask for an acknowledgement", code="not_an_acknowledgement")
        if task.get("status") not in _OPEN_TASK:
            raise Conflict(f"Task/{task_id} is {task.get('status')} already", code="task_closed")
        if not _owns(principal, task.get("owner")):
            raise Forbidden(f"this acknowledgement is asked of {(task.get('owner') or {}).get('reference')}",
                            code="not_the_owner")
        now = _now()
        task["status"] = "completed"
        task["executionPeriod"] = {**(task.get("executionPeriod") or {}), "end": now}
        task["lastModified"] = now
        if question:
            asked = _message(principal, task.get("for"), str((task.get("focus") or {}).get("reference") or ""),
                             ("question", "質問"), "routine", question, task.get("requester"))
            message = ctx.store.create(db, caller, "Communication", asked)
            task["output"] = [*(task.get("output") or []), {
                "type": {"text": "確認時の質問 / question asked on acknowledging"},
                "valueReference": {"reference": f"Communication/{message.resource_id}"}}]
        return resource_response(ctx, ctx.store.update(db, caller, "Task", task_id, task, None))

    return await in_transaction(ctx, work, (principal, Interaction("U", "acknowledge", f"Task/{task_id}")))


@router.post("/Bundle/{bundle_id}/$discharge-draft", summary="A discharge-sheet draft from a discharge summary")
async def discharge_draft(bundle_id: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    checked_id(bundle_id)

    def work(db: Session) -> Response:
        caller = caller_of(principal)
        document = orjson.loads(ctx.store.read(db, caller, "Bundle", bundle_id).body)
        # The document is in its patient's compartment (store/types.py): its Composition names one of ours.
        subject = reference_target(((document.get("entry") or [{}])[0].get("resource") or {}).get("subject"))
        try:
            draft = inbound.discharge_draft(document, patient_reference=f"Patient/{subject[1] if subject else ''}")
        except ValueError as error:
            raise Unprocessable(str(error), code="not_a_discharge_summary") from None
        return resource_response(ctx, ctx.store.create(db, caller, SHEET, draft), 201)

    return await in_transaction(ctx, work, (principal, Interaction("C", "discharge-draft", f"Bundle/{bundle_id}")))


# The crew's blocks of the emergency sheet, the only sections a crew report may carry.
CREW_SECTIONS = frozenset({"emergency.call", "emergency.crew"})


@router.post("/Patient/{patient_id}/$crew-report", summary="The ambulance crew's blocks of the emergency sheet")
async def crew_report(patient_id: str, request: Request, ctx: Context, principal: CurrentPrincipal) -> Response:
    """Parameters: ``report``, a QuestionnaireResponse holding only the emergency.call and emergency.crew
    sections; optional ``receiving``, the receiving hospital (Organization/<id>) to be told too."""
    checked_id(patient_id)
    values = operation_parameters(await bounded_body(request, 256 * 1024))
    report, receiving = values.get("report"), values.get("receiving")
    sections = [item for item in (report or {}).get("item") or [] if isinstance(item, dict)] \
        if isinstance(report, dict) else []
    if not sections or any(item.get("linkId") not in CREW_SECTIONS for item in sections):
        raise BadRequest("'report' is a QuestionnaireResponse with the emergency.call and emergency.crew sections "
                         "only", code="invalid_parameters", expression=["Parameters.parameter.where(name='report')"])
    if receiving is not None and not (isinstance(receiving, str) and receiving.startswith("Organization/")):
        raise BadRequest("'receiving' is a reference Organization/<id>", code="invalid_parameters")

    def work(db: Session) -> Response:
        _may_report(ctx, db, principal, patient_id)
        record = records.current(db, principal.network, patient_id, "EmergencySheet")
        if record is None:
            raise NotFound(f"Patient/{patient_id} has no current emergency sheet", code="no_emergency_sheet")
        server = Caller(network_id=principal.network, subject=f"user:{principal.subject}",
                        organization=principal.organization)  # the crew is the version's author
        sheet = orjson.loads(ctx.store.read(db, server, SHEET, record.resource_id).body)
        kept = [item for item in sheet.get("item") or [] if item.get("linkId") not in CREW_SECTIONS]
        sheet.update(item=kept + sections, status="amended")
        item = ctx.store.update(db, server, SHEET, record.resource_id, sheet, None)
        told = _message(principal, {"reference": f"Patient/{patient_id}"}, f"{SHEET}/{record.resource_id}",
                        ("report", "報告"), "urgent", "救急隊が急変時情報共有シートに記入しました / the ambulance crew "
                        "added its report to the emergency sheet", {"reference": receiving} if receiving else None)
        ctx.store.create(db, server, "Communication", told)
        return resource_response(ctx, item)

    return await in_transaction(ctx, work, (principal, Interaction("U", "crew-report", f"Patient/{patient_id}")))


# Helpers ------------------------------------------------------------------------------------------------


def _may_report(ctx: ShareContext, db: Session, principal: Principal, patient_id: str) -> None:
    """A crew report is for the professions break-the-glass is for (the crew, a physician), reading the
    patient's emergency sheet as a team member or through a grant."""
    if principal.kind != "user" or principal.profession not in ctx.matrix.break_glass.professions:
        raise Forbidden(f"crew reports are for {', '.join(sorted(ctx.matrix.break_glass.professions))} only")
    decision = ctx.gate.decision(db, principal, SHEET, Action.READ, patient_id, "EmergencySheet")
    if not decision.allowed:
        ctx.gate.refuse(db, decision, f"Patient/{patient_id}", patient_id)



def _rules(ctx: ShareContext) -> SheetRules:
    if ctx.store.sheets is None:
        raise NotFound("sheet operations are off on this server", code="not_supported")
    return ctx.store.sheets


def _template(ctx: ShareContext, db: Session, principal: Principal, sheet: dict[str, Any]) -> Template:
    found = _rules(ctx).registry.find(db, principal.network, str(sheet.get("questionnaire")), any_status=True)
    if found is None:
        raise Unprocessable(f"the template {sheet.get('questionnaire')} is not known here", code="unknown_template")
    return found


def _patient(ctx: ShareContext, db: Session, principal: Principal, sheet: dict[str, Any]) -> dict[str, Any] | None:
    reference = str((sheet.get("subject") or {}).get("reference") or "")
    if not reference.startswith("Patient/"):
        return None
    try:
        found: dict[str, Any] = orjson.loads(ctx.store.read(db, caller_of(principal), "Patient",
                                                            reference.split("/", 1)[1]).body)
    except (Forbidden, NotFound):
        return None  # the document still names the patient by reference
    return found


def _owns(principal: Principal, owner: Any) -> bool:
    reference = (owner or {}).get("reference") if isinstance(owner, dict) else None
    return reference in (f"Practitioner/{principal.subject}", f"Organization/{principal.organization}")


def _message(principal: Principal, subject: Any, about: str, category: tuple[str, str], priority: str, text: str,
             recipient: Any) -> dict[str, Any]:
    """A team message about a sheet (a Communication): a question back to its sender, a crew's report."""
    message: dict[str, Any] = {
        "resourceType": "Communication", "status": "completed", "priority": priority,
        "category": [{"coding": [{"system": "urn:renkei:codesystem:message-category", "code": category[0],
                                  "display": category[1]}]}],
        "subject": subject, "about": [{"reference": about}] if about else [],
        "sent": _now(), "sender": {"reference": f"Practitioner/{principal.subject}"},
        "payload": [{"contentString": text}],
    }
    if recipient:
        message["recipient"] = [recipient]
    return message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
