"""A sheet's lifecycle, and how its problems are told to the client.

``in-progress`` is a draft: only its author's organisation sees it (access/gate.py reads the draft mark in the
stored layout). ``completed`` shares it with the team; after that it changes only as ``amended`` — a new version,
every earlier one kept — or is withdrawn as ``entered-in-error``, which is final. ``stopped`` is a draft given up.
"""

from __future__ import annotations

from typing import Any

from services.kit.errors import RenkeiError
from services.share.access.layout import DRAFTS
from services.share.sheets.templates import TRANSLATION_EXTENSION
from services.share.sheets.validation import Issue

__all__ = ["DRAFTS", "NEXT", "SHARED", "SheetInvalid", "check_transition", "outcome_issue", "sheet_issue"]
SHARED = frozenset({"completed", "amended"})
# status before (None: a new sheet) -> the statuses its next version may have
NEXT: dict[str | None, frozenset[str]] = {
    None: frozenset({"in-progress", "completed"}),
    "in-progress": frozenset({"in-progress", "completed", "stopped", "entered-in-error"}),
    "stopped": frozenset({"in-progress", "entered-in-error"}),
    "completed": frozenset({"amended", "entered-in-error"}),
    "amended": frozenset({"amended", "entered-in-error"}),
    "entered-in-error": frozenset(),
}
LINK_ID_EXTENSION = "urn:renkei:extension:link-id"
ISSUE_SYSTEM = "urn:renkei:sheet-issue"
# Validation issue code -> OperationOutcome issue type (http://hl7.org/fhir/issue-type)
_ISSUE_TYPES = {"required": "required", "answer-type": "value", "answer-option": "code-invalid",
                "unknown-item": "structure", "not-repeating": "structure", "disabled-answered": "business-rule",
                "wrong-questionnaire": "not-found", "status": "business-rule"}


class SheetInvalid(RenkeiError):
    """A sheet that does not fit its template or its lifecycle: every problem, one issue each."""

    status_code = 422
    code = "invalid_sheet"

    def __init__(self, issues: list[Issue]) -> None:
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"{first.message_en}{more}", expression=[first.expression],
                         issues=[outcome_issue(issue) for issue in issues])


def outcome_issue(issue: Issue) -> dict[str, Any]:
    """An OperationOutcome issue a tablet app can put beside the field: the linkId, the FHIRPath, the message in
    Japanese (``details.text``, with its English translation) and in English (``diagnostics``)."""
    found: dict[str, Any] = {
        "severity": "error",
        "code": _ISSUE_TYPES.get(issue.code, "invalid"),
        "details": {"coding": [{"system": ISSUE_SYSTEM, "code": issue.code}], "text": issue.message_ja,
                    "_text": {"extension": [_english(issue.message_en)]}},
        "diagnostics": issue.message_en,
        "expression": [issue.expression],
    }
    if issue.link_id:
        found["extension"] = [{"url": LINK_ID_EXTENSION, "valueString": issue.link_id}]
    return found


def _english(text: str) -> dict[str, Any]:
    return {"url": TRANSLATION_EXTENSION, "extension": [{"url": "lang", "valueCode": "en"},
                                                        {"url": "content", "valueString": text}]}


def sheet_issue(code: str, message_ja: str, message_en: str, expression: str = "QuestionnaireResponse") -> Issue:
    """An issue about the sheet as a whole (its template, its status), not about one item."""
    return Issue(code, None, "", expression, message_ja, message_en)


def check_transition(before: str | None, after: Any) -> None:
    """Refuse a status the sheet may not move to from ``before`` (None: a new sheet)."""
    allowed = NEXT.get(before, frozenset())
    if after in allowed:
        return
    was = "新規" if before is None else before
    if not allowed:
        raise SheetInvalid([sheet_issue(
            "status", f"取り消された記録（{was}）は変更できません",
            f"a sheet marked {before} is final and cannot change", "QuestionnaireResponse.status")])
    raise SheetInvalid([sheet_issue(
        "status", f"状態を {was} から {after} には変えられません（可能: {'、'.join(sorted(allowed))}）",
        f"a {'new sheet' if before is None else before + ' sheet'} cannot become {after!r}; "
        f"allowed: {', '.join(sorted(allowed))}", "QuestionnaireResponse.status")])
