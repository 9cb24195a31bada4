"""The ASGI application: the identity service, the share service, or both in one process.

The two services share no tables and no objects: the share service verifies tokens against the identity
service's JWKS over HTTP even when both run here, so splitting them into two deployments changes configuration,
not code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.auth.app import auth_router
from services.auth.context import AuthContext
from services.health import router as health_router
from services.kit import metrics
from services.kit.errors import RenkeiError
from services.kit.limits import Cors, Protect, cors_options
from services.kit.logging import configure_logging
from services.kit.requests import Observe, route_template
from services.kit.settings import Settings
from services.kit.tokens import InvalidToken, challenge_header
from services.share.access.break_glass import router as fhir_operations
from services.share.audit.buffer import flush_forever
from services.share.audit.chainer import chain_forever
from services.share.audit.report import router as fhir_access_report
from services.share.audit.search import router as fhir_audit_events
from services.share.context import ShareContext
from services.share.events.hub import Hub
from services.share.events.wakeup import WakeOnWrite
from services.share.fhir.batch import router as fhir_batch
from services.share.fhir.binary import MAX_JSON_BYTES as BINARY_JSON_BYTES
from services.share.fhir.endpoints import authenticated as fhir_authenticated
from services.share.fhir.endpoints import public as fhir_public
from services.share.fhir.messages import router as fhir_messages
from services.share.fhir.resources import router as fhir_resources
from services.share.fhir.responses import outcome_response
from services.share.fhir.sheets import router as fhir_sheets
from services.share.fhir.subscriptions import router as fhir_subscriptions
from services.share.fhir.teams import router as fhir_teams
from services.share.push.endpoints import router as web_push
from services.share.push.urgent import UrgentPush
from services.share.push.webpush import VapidKey
from services.share.push.ws import router as push_socket
from services.share.sheets.reviews import review_forever
from services.share.subscriptions.delivery import Deliveries

log = structlog.get_logger(__name__)


def create_app(
    settings: Settings | None = None, *, auth: bool = True, share: bool = True, plaintext_baseline: bool = False,
    enforce_access: bool = True, sheet_rules: bool = True,
) -> FastAPI:
    """The application; ``plaintext_baseline`` (unencrypted storage) exists only for bench/store.py,
    ``enforce_access`` off (no access decisions, no audit) only for bench/access.py's baseline, and ``sheet_rules``
    off (sheets stored as any resource: no template check, no scene rules) only for bench/sheets.py's."""
    settings = settings or Settings()
    configure_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if auth:
            auth_ctx = AuthContext.build(settings)
            with auth_ctx.db.transaction() as session:
                auth_ctx.signer.ensure_key(session)
            app.state.auth = auth_ctx
        background: list[asyncio.Task[None]] = []
        if share:
            share_ctx = app.state.share = ShareContext.build(settings, plaintext_baseline=plaintext_baseline,
                                                             enforce_access=enforce_access, sheet_rules=sheet_rules)
            if settings.audit_chain_interval_seconds > 0:
                background.append(asyncio.create_task(chain_forever(share_ctx, settings.audit_chain_interval_seconds)))
            if settings.emergency_review_interval_seconds > 0 and share_ctx.store.sheets is not None:
                background.append(asyncio.create_task(
                    review_forever(share_ctx, settings.emergency_review_interval_seconds)))
            if share_ctx.audit_buffer is not None:
                background.append(asyncio.create_task(
                    flush_forever(share_ctx.audit_buffer, settings.audit_flush_seconds, share_ctx.run_upkeep)))
            hub = app.state.hub = Hub(share_ctx)
            vapid = app.state.vapid = VapidKey.load(settings)
            hub.on_urgent = UrgentPush(share_ctx, hub, vapid)  # Web Push wake-ups for urgent events
            background.append(asyncio.create_task(hub.run()))
            background.append(asyncio.create_task(Deliveries(share_ctx).run()))  # rest-hook Subscriptions
            if settings.redis_url:
                background.append(asyncio.create_task(hub.listen(settings.redis_url)))
        settle_memory()
        yield
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if share:
            app.state.hub.close()
            await app.state.share.verifier.jwks.close()
            await app.state.share.policies.close()
            app.state.share.close()
        if auth:
            app.state.auth.db.dispose()

    app = FastAPI(
        title="Renkei",
        version="0.1.0",
        lifespan=lifespan,
        description="Care-information sharing for home-care teams (FHIR R4B).",
    )
    app.state.settings = settings
    app.include_router(health_router)
    # Routes are matched in order: the FHIR API, which takes nearly all requests, is tried first.
    if share:
        app.include_router(fhir_public)
        app.include_router(fhir_operations)  # before /fhir/{type}/{id}, which would take Patient/{id}/$op
        app.include_router(fhir_access_report)
        app.include_router(fhir_teams)  # /fhir/$invitations, before /fhir/{type}
        app.include_router(fhir_sheets)  # QuestionnaireResponse/{id}/$document …, before /fhir/{type}/{id}
        app.include_router(fhir_messages)  # Communication/{id}/$read …, before /fhir/{type}/{id}
        app.include_router(fhir_subscriptions)  # Subscription and its $status, $events, before /fhir/{type}
        app.include_router(fhir_audit_events)  # the audit log as AuditEvents, before /fhir/{type}
        app.include_router(fhir_resources)
        app.include_router(fhir_batch)
        app.include_router(fhir_authenticated)
        app.include_router(push_socket)
        app.include_router(web_push)
        app.add_middleware(WakeOnWrite)
    if auth:
        app.include_router(auth_router())
    install_error_handlers(app)
    # Outermost last: request id, access log, metrics and security headers around everything (CORS answers and
    # refusals included); CORS around the limits, so that a browser can read a 429's Retry-After.
    app.add_middleware(Protect, settings=settings, fhir_binary_body_bytes=BINARY_JSON_BYTES, refuse=error_response)
    app.add_middleware(Cors, **cors_options(settings))
    app.add_middleware(Observe, settings=settings)
    return app


def settle_memory() -> None:
    """Once started, the objects a worker holds for its whole life (modules, the FHIR model classes, the templates)
    leave the garbage collector's view: a full collection then walks what requests made, not those hundreds of
    thousands of objects — pauses of tens of milliseconds that were a sheet's p99 (bench/sheets.py)."""
    gc.collect()
    gc.freeze()
    # A request allocates thousands of objects (a sheet's models): collecting the youngest every 700 allocations,
    # Python's default, ran several collections per request.
    gc.set_threshold(20_000, 20, 20)


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


# What a 503 for an unreachable database asks the caller to wait, in seconds: a restart or failover takes a few.
DATABASE_RETRY_AFTER_SECONDS = 5


def install_error_handlers(app: FastAPI) -> None:
    """One place where errors become answers: OperationOutcome under /fhir, OAuth-style JSON elsewhere."""

    @app.exception_handler(RenkeiError)
    async def renkei_error(request: Request, error: RenkeiError) -> Response:
        return error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()]
        return _refusal(request, 400, "; ".join(problems) or "invalid request", "invalid_request")

    @app.exception_handler(IntegrityError)
    async def write_conflict(request: Request, error: IntegrityError) -> Response:
        # Two writers raced for the same version or key; the loser's transaction was rolled back whole.
        message = "a concurrent change conflicted with this request; nothing was written — retry it"
        return _refusal(request, 409, message, "write_conflict", oauth_error="conflict")

    @app.exception_handler(DataError)
    async def unstorable_value(request: Request, error: DataError) -> Response:
        # The database refused a value the request carried (PostgreSQL stores no NUL character in text); the
        # transaction was rolled back whole. Input validation should have said so first: this is the safety net.
        message = "a value in this request cannot be stored or searched for (a NUL character?); nothing was written"
        return _refusal(request, 400, message, "invalid_value", oauth_error="invalid_request")

    async def database_away(request: Request, error: Exception) -> Response:
        # The database cannot be reached (stopped, restarting, failed over, out of connections): a retry after a
        # moment may well succeed. Almost always nothing was written; but a database that fails while a commit is
        # on its way may have made it durable without saying so (the reliability suite sees a few in a hundred
        # crashes), so the answer does not promise it: a client retries a create with the same Idempotency-Key.
        # The pool recovers by itself: a connection found dead invalidates the pool, and idle ones are pinged
        # before use (kit/db.py).
        # The route's template, never its path: a path names a patient's resources.
        log.warning("database_unavailable", error=type(error).__name__, route=route_template(request.scope))
        message = ("the database is unavailable for the moment — retry later (a write retried with the same "
                   "Idempotency-Key is never made twice)")
        headers = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
        if _is_fhir(request):
            return outcome_response(503, message, code="unavailable", headers=headers)
        return JSONResponse({"error": "temporarily_unavailable", "error_description": message}, status_code=503,
                            headers=headers)

    for kind in (OperationalError, InterfaceError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(kind, database_away)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if _is_fhir(request):
            return outcome_response(error.status_code, str(error.detail), headers=dict(error.headers or {}))
        return JSONResponse(
            {"error": "http_error", "error_description": str(error.detail)},
            status_code=error.status_code,
            headers=error.headers,
        )


def error_response(path: str, error: RenkeiError) -> Response:
    """A RenkeiError's answer: an OperationOutcome under /fhir, OAuth-style JSON elsewhere."""
    headers = dict(error.headers)
    fhir = path.startswith("/fhir")
    if isinstance(error, InvalidToken):
        headers.update(challenge_header(error))
        metrics.token_failed("fhir" if fhir else "auth", error.code)
    if fhir:
        return outcome_response(
            error.status_code, error.message, code=error.code, headers=headers, expression=error.expression,
            issues=error.issues,
        )
    return JSONResponse(
        {"error": error.code, "error_description": error.message},
        status_code=error.status_code,
        headers=headers,
    )


def _refusal(request: Request, status: int, message: str, code: str, *, oauth_error: str | None = None) -> Response:
    """An OperationOutcome under /fhir, OAuth-style JSON (``oauth_error``, else ``code``) elsewhere."""
    if _is_fhir(request):
        return outcome_response(status, message, code=code)
    return JSONResponse({"error": oauth_error or code, "error_description": message}, status_code=status)


def app_from_environment() -> FastAPI:
    """The application of one worker of `renkei serve --workers N`, configured by RENKEI_* variables."""
    return create_app(Settings())
