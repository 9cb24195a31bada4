"""The caller of a share-service route, as a typed dependency: routers are authenticated by default."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.kit.tokens import Principal
from services.share.context import ShareContext


async def get_context(request: Request) -> ShareContext:
    ctx: ShareContext = request.app.state.share
    return ctx


Context = Annotated[ShareContext, Depends(get_context)]


async def current_principal(ctx: Context, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return await ctx.verifier.authenticate(authorization)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
