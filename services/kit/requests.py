"""Every request's id, access-log line, latency metric and security headers, in one plain ASGI middleware.

- The request id: a well-formed incoming ``X-Request-ID`` (1-64 of ``[A-Za-z0-9._-]``), else a new one; bound in
  structlog's context for the request's duration (so every log line of the request carries ``request_id``) and
  returned in the response's ``X-Request-ID``.
- One JSON line per request (``settings.access_log``): method, route template (never the raw path, never the
  query: search parameters hold names), status, duration, request id, and — when the request was authenticated —
  a pseudonymous user: the first 16 hex digits of HMAC-SHA256(``sub``) under a per-installation key, so that one
  user's requests can be followed without the logs naming them.
- The latency histogram (services/kit/metrics.py) and the open-WebSocket gauge.
- Security headers on every HTTP response (unless the route set its own): ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY``, a ``Content-Security-Policy`` allowing nothing
  (JSON APIs load nothing; the interactive API docs keep theirs), and ``Cache-Control: no-store`` on ``/fhir`` and
  ``/auth`` answers that did not say otherwise.

Plain ASGI, not BaseHTTPMiddleware: no task, no body copy; it costs a few microseconds a request, most of them the
log line's.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import os
import re
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kit import metrics
from services.kit.secrets import load_or_create_key
from services.kit.settings import Settings

log = structlog.get_logger("renkei.access")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_HTML_PAGES = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_SECURITY_NAMES = frozenset(name for name, _ in _SECURITY_HEADERS)
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")
_VARY = (b"vary", b"Origin")  # answers differ by Origin (services/kit/limits.py Cors): shared caches must know


class _RequestFacts:
    """What the request learns about itself on the way (filled by ``note_subject``)."""

    __slots__ = ("subject",)

    def __init__(self) -> None:
        self.subject: str | None = None


_current: contextvars.ContextVar[_RequestFacts | None] = contextvars.ContextVar("renkei_request", default=None)


def note_subject(subject: str) -> None:
    """Record that this request was authenticated as ``subject`` (a token's verified ``sub``), for its access-log
    line. Call it where a token has just been verified; it does nothing outside a request."""
    facts = _current.get()
    if facts is not None:
        facts.subject = subject


def request_id_of(scope: Scope) -> str | None:
    """The request's id (as answered in X-Request-ID), once the middleware has run."""
    value = scope.get("renkei.request_id")
    return value if isinstance(value, str) else None


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/fhir/{type}/{id}``), or ``unmatched``: never the raw path.

    FastAPI (0.16x) includes routers lazily: the matched route's own ``path`` lacks the prefixes of the routers
    that include it (``/login`` for ``/auth/login``); its effective context holds the whole template."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    included = scope.get("fastapi")
    if included:
        effective = getattr(included.get("effective_route_context"), "path", None)
        if isinstance(effective, str) and effective:
            return effective
        prefix = getattr(getattr(included.get("included_router"), "include_context", None), "prefix", "")
        path = getattr(route, "path", None)
        if isinstance(path, str) and isinstance(prefix, str):
            return prefix + path
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class Pseudonyms:
    """HMAC-SHA256 of a user id under a per-installation key, 16 hex digits; remembered for the users seen."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._known: dict[str, str] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> Pseudonyms:
        path = settings.resolved_key_dir / "log-pseudonym.key"
        return cls(load_or_create_key(path, settings.log_pseudonym_key))

    def __call__(self, subject: str) -> str:
        known = self._known.get(subject)
        if known is None:
            if len(self._known) >= 10_000:
                self._known.clear()
            known = self._known[subject] = hmac.new(self._key, subject.encode(), hashlib.sha256).hexdigest()[:16]
        return known


class Observe:
    """Request id, access log, latency metric and security headers (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.access_log = settings.access_log
        self.pseudonym = Pseudonyms.for_settings(settings)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing other scopes on: a WebSocket keeps no frame of this layer for its whole life
        # (services/share/push/ws.py counts the open ones).
        if scope["type"] == "http":
            return self._http(scope, receive, send)
        return self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        incoming = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                incoming = value
                break
        raw_id = incoming if incoming is not None and _VALID_ID.fullmatch(incoming) else os.urandom(16).hex().encode()
        request_id = raw_id.decode()
        scope["renkei.request_id"] = request_id
        facts = _RequestFacts()
        facts_token = _current.set(facts)
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        path: str = scope["path"]
        guarded = path.startswith(("/fhir", "/auth"))
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.append((REQUEST_ID_HEADER, raw_id))
                if present.isdisjoint(_SECURITY_NAMES):
                    headers.extend(_SECURITY_HEADERS)
                else:
                    headers.extend(header for header in _SECURITY_HEADERS if header[0] not in present)
                if _CSP[0] not in present and path not in _HTML_PAGES:
                    headers.append(_CSP)
                if guarded and _NO_STORE[0] not in present:
                    headers.append(_NO_STORE)
                if _VARY[0] not in present:
                    headers.append(_VARY)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            metrics.observe_request(scope["method"], route, status, seconds)
            if self.access_log:
                fields: dict[str, Any] = {"method": scope["method"], "route": route, "status": status,
                                          "duration_ms": round(seconds * 1000, 2)}
                if facts.subject is not None:
                    fields["user"] = self.pseudonym(facts.subject)
                log.info("request", **fields)
            structlog.contextvars.reset_contextvars(**bound)
            _current.reset(facts_token)
