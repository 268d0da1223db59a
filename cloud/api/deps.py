"""Dependencies every router shares: the app's context, and bearer tokens with their scopes."""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from cloud.api.context import ApiContext
from cloud.errors import ControllerError, NotFound
from cloud.models import ApiToken, Device

SCOPE_RANK = {"read": 0, "print": 1, "admin": 2}


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


async def token(
    request: Request, ctx: Ctx, authorization: Annotated[str | None, Header()] = None
) -> ApiToken:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ControllerError("missing bearer token", status=401)
    row = await ctx.registry.check_token(authorization[7:].strip())
    if row is None:
        raise ControllerError("invalid or revoked token", status=401)
    request.state.actor = row.name
    return row


def need(scope: str) -> Callable[[ApiToken], Awaitable[ApiToken]]:
    async def check(tok: Annotated[ApiToken, Depends(token)]) -> ApiToken:
        if SCOPE_RANK.get(tok.scope, -1) < SCOPE_RANK[scope]:
            raise ControllerError(
                f"token {tok.name!r} ({tok.scope}) may not do this: needs {scope}", status=403
            )
        return tok

    return check


Read = Annotated[ApiToken, Depends(need("read"))]
PrintScope = Annotated[ApiToken, Depends(need("print"))]
Admin = Annotated[ApiToken, Depends(need("admin"))]


async def host(ctx: ApiContext, name: str) -> Device:
    """A printer host by name; a bridge's name is not one (bridges have endpoints of their own,
    which also cut the right session)."""
    device = await ctx.registry.get_device(name)
    if device.kind != "device":
        raise NotFound(f"no device named {name!r} (it is a bridge: see printfleet bridge)")
    return device
