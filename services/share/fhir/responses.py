"""FHIR JSON responses and OperationOutcomes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"

# HTTP status -> OperationOutcome issue type (http://hl7.org/fhir/issue-type).
ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    503: "transient",
}


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def operation_outcome(
    status: int,
    message: str,
    *,
    code: str | None = None,
    expression: list[str] | None = None,
    severity: str = "error",
) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "severity": severity,
        "code": ISSUE_TYPES.get(status, "exception"),
        "diagnostics": message,
    }
    if code:
        issue["details"] = {"coding": [{"system": "urn:renkei:error", "code": code}], "text": message}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    expression: list[str] | None = None,
    headers: dict[str, str] | None = None,
    issues: list[dict[str, Any]] | None = None,
) -> FhirResponse:
    outcome = operation_outcome(status, message, code=code, expression=expression)
    if issues:
        outcome["issue"] = issues
    return FhirResponse(
        outcome,
        status_code=status,
        headers=headers,
    )
