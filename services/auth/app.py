"""The identity service's router, mounted at ``/auth``."""

from __future__ import annotations

from fastapi import APIRouter

from services.auth.directory.endpoints import router as admin_router
from services.auth.directory.joint_use import router as joint_use_router
from services.auth.sessions.endpoints import router as sessions_router
from services.auth.signing.endpoints import router as signing_router


def auth_router() -> APIRouter:
    router = APIRouter(prefix="/auth", tags=["auth"])
    router.include_router(sessions_router)
    router.include_router(signing_router)
    router.include_router(admin_router)
    router.include_router(joint_use_router)
    return router
