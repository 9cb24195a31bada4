"""The ``/fhir`` surface: public metadata; everything else authenticated first, then answered."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.share.fhir.metadata import capability_statement, smart_configuration
from services.share.fhir.responses import FhirResponse, outcome_response
from services.share.security.deps import Context, CurrentPrincipal

public = APIRouter(prefix="/fhir", tags=["fhir"])
authenticated = APIRouter(prefix="/fhir", tags=["fhir"])

_STARTED = datetime.now(UTC).isoformat(timespec="seconds")


@public.get("/metadata")
def metadata(ctx: Context) -> Response:
    return FhirResponse(capability_statement(ctx.settings, _STARTED))


@public.get("/.well-known/smart-configuration")
def smart(ctx: Context) -> Response:
    return FhirResponse(smart_configuration(ctx.settings), media_type="application/json")


@authenticated.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def unsupported(path: str, principal: CurrentPrincipal, request: Request) -> Response:
    """Anything the CapabilityStatement does not list. Authentication comes first, so nothing leaks."""
    resource_type = path.split("/", 1)[0] or "(base)"
    return outcome_response(
        404,
        f"{resource_type} is not supported by this server; see /fhir/metadata",
        code="unsupported_resource",
    )
