"""Request dependencies for the identity service: its context, the request transaction, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from services.auth.context import AuthContext
from services.auth.directory.models import User
from services.auth.sessions.models import LoginSession
from services.kit import tokens
from services.kit.db import utcnow
from services.kit.errors import Forbidden
from services.kit.requests import note_subject
from services.kit.tokens import InvalidToken, Principal


async def get_context(request: Request) -> AuthContext:
    ctx: AuthContext = request.app.state.auth
    return ctx


Context = Annotated[AuthContext, Depends(get_context)]


def _transaction(ctx: Context) -> Iterator[Session]:
    with ctx.db.transaction() as session:
        yield session


# scope="function": the transaction commits before the response is sent, so a client never sees success for
# a write that did not land.
DbSession = Annotated[Session, Depends(_transaction, scope="function")]


async def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


Address = Annotated[str, Depends(client_address)]


def authenticate_user(ctx: AuthContext, db: Session, authorization: str | None) -> tuple[Principal, User]:
    """The user behind a bearer token whose session is still open."""
    token = tokens.bearer(authorization)
    kid = tokens.unverified_kid(token)
    key = tokens.keys_from_jwks(ctx.signer.jwks(db)).get(kid)
    if key is None:
        raise InvalidToken("token key id is unknown")
    principal = tokens.verify(
        token,
        key,
        issuer=ctx.settings.issuer,
        audience=ctx.settings.fhir_base,
        leeway=ctx.settings.clock_skew_seconds,
    )
    if principal.kind != "user":
        raise Forbidden("this endpoint is for users, not system clients")
    session = db.get(LoginSession, principal.session) if principal.session else None
    user = db.get(User, principal.subject)
    if (
        session is None
        or session.revoked_at is not None
        or session.expires_at <= utcnow()
        or user is None
        or user.disabled
    ):
        raise InvalidToken("the session has ended")
    note_subject(principal.subject)  # the access log's pseudonymous user
    return principal, user


def _current_user(
    ctx: Context, db: DbSession, authorization: Annotated[str | None, Header()] = None
) -> tuple[Principal, User]:
    return authenticate_user(ctx, db, authorization)


CurrentUser = Annotated[tuple[Principal, User], Depends(_current_user)]


def _current_admin(caller: CurrentUser) -> tuple[Principal, User]:
    principal, user = caller
    if not user.is_admin:
        raise Forbidden("network administrators only")
    return principal, user


CurrentAdmin = Annotated[tuple[Principal, User], Depends(_current_admin)]
