"""``/v1/tokens``, ``/v1/keys`` and ``/v1/audit``: API tokens, the controller's signing keys, and the
audit log (admin only)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import Admin, Ctx
from cloud.audit import audit_view
from cloud.errors import ControllerError

router = APIRouter()


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64)
    scope: Literal["admin", "print", "read"]


@router.get("/v1/tokens")
async def list_tokens(_t: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "scope": t.scope, "created_at": t.created_at, "revoked_at": t.revoked_at}
        for t in await ctx.registry.list_tokens()
    ]


@router.post("/v1/tokens", status_code=201)
async def create_token(body: TokenIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    token = await ctx.registry.create_token(body.name, body.scope)
    return {"name": body.name, "scope": body.scope, "token": token}


@router.delete("/v1/tokens/{name}")
async def revoke_token(name: str, tok: Admin, ctx: Ctx) -> dict[str, Any]:
    if name == tok.name:
        raise ControllerError("a token cannot revoke itself", status=409)
    await ctx.registry.revoke_token(name)
    return {"revoked": name}


@router.get("/v1/keys")
async def list_keys(_t: Admin, ctx: Ctx) -> list[dict[str, object]]:
    peers = [*await ctx.registry.list_devices(), *await ctx.registry.list_devices("bridge")]
    trust = [(d.name, d.trusted_kids) for d in peers]
    return ctx.controller.keyring.describe(trust)


@router.post("/v1/keys/rotate")
async def rotate_keys(_t: Admin, ctx: Ctx) -> dict[str, Any]:
    """A new signing key; every device is sent the new key list, signed by a key it trusts."""
    new = await ctx.controller.rotate_keys()
    return {"active": new.kid, "keys": [k.kid for k in ctx.controller.keyring.keys]}


@router.delete("/v1/keys/{kid}")
async def retire_key(kid: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    peers = [*await ctx.registry.list_devices(), *await ctx.registry.list_devices("bridge")]
    keyring = ctx.controller.keyring
    still = [
        d.name
        for d in peers
        if d.trusted_kids and kid in d.trusted_kids and keyring.active.kid not in d.trusted_kids
    ]
    if still:
        raise ControllerError(
            f"devices still trust only this key: {', '.join(still)}; they would be cut off", status=409
        )
    keyring.retire(kid)
    return {"retired": kid}


@router.get("/v1/audit")
async def audit(
    _t: Admin,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    return [
        audit_view(e) for e in await ctx.audit.list(limit=limit, actor=actor, action=action, outcome=outcome)
    ]
