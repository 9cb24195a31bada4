"""The caller of a share-service route, as a typed dependency: routers are authenticated by default."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from services.kit.requests import note_subject
from services.kit.tokens import Principal
from services.share.context import ShareContext


async def get_context(request: Request) -> ShareContext:
    ctx: ShareContext = request.app.state.share
    return ctx


Context = Annotated[ShareContext, Depends(get_context)]


class BearerPrincipal(HTTPBearer):
    """The verified access token of the ``Authorization`` header (services/share/security/verifier.py).

    A security scheme rather than a declared header: OpenAPI describes it as what it is (bearer, JWT), and
    FastAPI resolves it from the request alone, with no sub-dependencies to solve on every request.
    """

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        ctx: ShareContext = request.app.state.share
        principal = await ctx.verifier.authenticate(request.headers.get("authorization"))
        note_subject(principal.subject)  # the access log's pseudonymous user
        # The network's sharing policy, for the access decisions this request makes (usually remembered).
        await ctx.policies.of(principal.network)
        return principal


current_principal = BearerPrincipal(bearerFormat="JWT", scheme_name="bearer", auto_error=False,
                                    description="An access token from the auth service (/auth/login, /auth/token)")
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
