"""The public key set, for every service that verifies our tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.auth.deps import Context, DbSession

router = APIRouter()


@router.get("/jwks.json")
def jwks(ctx: Context, db: DbSession, response: Response) -> dict[str, Any]:
    # Short caching: verifiers refetch on an unknown kid anyway, and rotation must show up quickly.
    response.headers["Cache-Control"] = "public, max-age=60"
    return ctx.signer.jwks(db)
