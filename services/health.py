"""Liveness and readiness: ``/healthz`` says the process answers, ``/readyz`` that it can do its work; ``/metrics``
is the Prometheus exposition, for callers in ``settings.metrics_allow`` only (404 to everyone else)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.auth.context import AuthContext
from services.kit import metrics
from services.kit.settings import Settings
from services.share.context import ShareContext

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database(db: Any) -> str:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        return f"error: {type(error).__name__}"
    return "ok"


def _check_signing_key(auth: AuthContext) -> str:
    try:
        with auth.db.transaction() as session:
            return "ok" if auth.signer.active_key(session) is not None else "error: no active signing key"
    except Exception as error:
        return f"error: {type(error).__name__}"


async def _check_jwks(share: ShareContext) -> str:
    try:
        await share.verifier.jwks.refresh()
    except Exception as error:
        return f"error: {type(error).__name__}"
    return "ok"


async def _check_redis(url: str) -> str:
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        return f"error: {type(error).__name__}"
    finally:
        await client.aclose()
    return "ok"


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Databases reachable, a signing key in place, the identity service's keys fetchable; Redis, if set, is
    reported (``degraded`` while it is away) without making the instance unready."""
    auth: AuthContext | None = getattr(request.app.state, "auth", None)
    share: ShareContext | None = getattr(request.app.state, "share", None)
    settings: Settings = request.app.state.settings
    checks: dict[str, str] = {}
    # Database checks block, so they run in the thread pool: a hung database must not stall the event loop.
    if auth is not None:
        checks["auth_database"] = await run_in_threadpool(_check_database, auth.db)
        checks["auth_signing_key"] = await run_in_threadpool(_check_signing_key, auth)
    if share is not None:
        checks["share_database"] = await run_in_threadpool(_check_database, share.db)
        checks["share_jwks"] = await _check_jwks(share)
    ready = all(value == "ok" for value in checks.values())
    status = "ready" if ready else "not ready"
    if settings.redis_url:
        # Reported, but no reason to take the instance out of service: without Redis, wake-ups between instances
        # fall back to the event log's poll and rate limits to each process's own counts (tests/reliability/
        # test_outage.py). An orchestrator taking every instance out for it would turn a slower push into an outage.
        checks["redis"] = await _check_redis(settings.redis_url)
        if ready and checks["redis"] != "ok":
            status = "degraded"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics_exposition(request: Request) -> Response:
    """Latencies, connections, failures — no patient data; refused as if absent outside the allowed networks."""
    settings: Settings = request.app.state.settings
    if not metrics.address_allowed(request.client.host if request.client else None, settings.metrics_allow):
        raise StarletteHTTPException(404, "Not Found")
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
