"""What a request may look like: JSON only (``Accept``, ``_format``, ``Content-Type``), and bodies of bounded size."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from services.kit.errors import BadRequest, RenkeiError

JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}


class NotAcceptable(RenkeiError):
    status_code = 406
    code = "not_acceptable"


class UnsupportedMediaType(RenkeiError):
    status_code = 415
    code = "unsupported_media_type"


def check_accept(request: Request) -> None:
    wanted = request.query_params.get("_format")
    if wanted is not None:
        if wanted.split(";")[0].strip().lower() not in JSON_FORMATS:
            raise NotAcceptable(f"_format={wanted} is not supported; this server speaks application/fhir+json")
        return
    accept = request.headers.get("accept", "")
    if not accept:
        return
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if not any(t in JSON_FORMATS or t in ("*/*", "application/*") for t in types):
        raise NotAcceptable(f"Accept: {accept} cannot be served; this server speaks application/fhir+json")


def check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_FORMATS:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'} is not supported; send application/fhir+json"
        )


async def accept_json(request: Request) -> None:
    """``check_accept`` as a router dependency; async so it runs on the event loop, not in a worker thread."""
    check_accept(request)


class PayloadTooLarge(RenkeiError):
    status_code = 413
    code = "too_large"


def check_length(request: Request, limit: int) -> None:
    """Refuse a declared Content-Length over the limit before reading a byte of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the content exceeds {limit} bytes")


async def bounded_body(request: Request, limit: int) -> bytes:
    """The whole body, read as it streams in and refused (413) as soon as it passes ``limit``."""
    check_length(request, limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    return bytes(body)


def documented_headers(*names: str) -> dict[str, Any]:
    """``openapi_extra`` describing optional request headers that an endpoint reads itself (optional_headers),
    exactly as FastAPI describes a declared ``Header()`` parameter."""
    schema = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    return {"parameters": [{"name": name.lower(), "in": "header", "required": False,
                            "schema": {**schema, "title": name}}
                           for name in names]}


def optional_headers(request: Request, *names: str) -> tuple[str | None, ...]:
    """The first value of each header, or None. Cheaper than declared parameters on the hottest routes."""
    headers = request.headers
    return tuple(headers.get(name) for name in names)


def operation_parameters(raw: bytes) -> dict[str, Any]:
    """An operation's Parameters body as {name: value} (the value[x], or the resource, of each single
    parameter)."""
    try:
        body = orjson.loads(raw) if raw.strip() else {"resourceType": "Parameters"}
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("this operation takes a Parameters resource", code="invalid_parameters")
    values: dict[str, Any] = {}
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise BadRequest("each parameter needs a name", code="invalid_parameters")
        value = next((v for k, v in parameter.items() if k.startswith("value")), parameter.get("resource"))
        if isinstance(value, dict) and "reference" in value:
            value = value["reference"]
        values[parameter["name"]] = value
    return values
