"""The caller of a share-service route, as a typed dependency: routers are authenticated by default."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.kit.tokens import Principal
from services.share.context import ShareContext


async def get_context(request: Request) -> ShareContext:
    ctx: ShareContext = request.app.state.share
    return ctx


Context = Annotated[ShareContext, Depends(get_context)]


async def current_principal(request: Request) -> Principal:
    # Reads the header itself rather than through a Header() parameter and the Context dependency: every
    # authenticated request passes here, and FastAPI's handling of each declared parameter costs more than this.
    ctx: ShareContext = request.app.state.share
    return await ctx.verifier.authenticate(request.headers.get("authorization"))


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
