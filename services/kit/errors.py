"""One exception hierarchy for both services.

Service code raises these; each service installs one handler that renders them — a small OAuth-style JSON
error on ``/auth`` routes, an OperationOutcome on ``/fhir`` routes. ``code`` is stable and machine-readable.
"""

from __future__ import annotations

from typing import Any


class RenkeiError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        keep_writes: bool = False,
        expression: list[str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        # A failure that must still be recorded (a failed login counts towards throttling and is audited):
        # the request transaction commits before the error is answered.
        self.keep_writes = keep_writes
        # FHIR element paths the error is about (OperationOutcome.issue.expression).
        self.expression = expression
        # Complete OperationOutcome issues, one per problem, when there are several (a sheet's checks): they
        # replace the single issue built from ``message``.
        self.issues = issues


class BadRequest(RenkeiError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(RenkeiError):
    status_code = 401
    code = "invalid_token"


class Forbidden(RenkeiError):
    status_code = 403
    code = "forbidden"


class NotFound(RenkeiError):
    status_code = 404
    code = "not_found"


class Conflict(RenkeiError):
    status_code = 409
    code = "conflict"


class TooManyRequests(RenkeiError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, keep_writes: bool = True) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))}, keep_writes=keep_writes)
        self.retry_after = retry_after
