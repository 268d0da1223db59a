"""``/v1/bridges``: phone bridges (add, near, enrol, disable, enable, rotate, remove)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.context import ApiContext
from cloud.api.deps import Admin, Ctx, Read
from cloud.bridges import Bridges, bridge_view
from cloud.errors import ControllerError
from kernel import wire

router = APIRouter()


class BridgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    near: list[str] = Field(default_factory=list, max_length=256)
    enroll: bool = False
    enroll_ttl: float = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class NearIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    near: list[str] = Field(max_length=256)


def bridges_of(ctx: ApiContext) -> Bridges:
    if ctx.bridges is None or ctx.bridge_config is None:
        raise ControllerError("bridges are not available on this controller", status=404)
    return ctx.bridges


def _peer(name: str) -> wire.Peer:
    return wire.Peer(role=wire.Role.BRIDGE, name=name)


@router.get("/v1/bridges")
async def list_bridges(_t: Read, ctx: Ctx) -> list[dict[str, Any]]:
    now = wire.now_ms()
    return [bridge_view(b, now) for b in await bridges_of(ctx).list()]


@router.get("/v1/bridges/{name}")
async def get_bridge(name: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    return bridge_view(await bridges_of(ctx).get(name), wire.now_ms())


@router.post("/v1/bridges", status_code=201)
async def add_bridge(body: BridgeIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    bridge, secret = await bridges_of(ctx).add(body.name, body.near)
    await ctx.credentials_changed()
    view = bridge_view(bridge, wire.now_ms())
    if body.enroll:
        token, expires = await ctx.registry.create_enrollment(bridge.name, body.enroll_ttl)
        return {"bridge": view, "enrollment_token": token, "expires_at": expires}
    assert ctx.bridge_config is not None
    return {"bridge": view, "bridge_config": ctx.bridge_config(bridge.name, secret)}


@router.post("/v1/bridges/{name}/near")
async def set_bridge_near(name: str, body: NearIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    return bridge_view(await bridges_of(ctx).set_near(name, body.near), wire.now_ms())


@router.post("/v1/bridges/{name}/enrollment", status_code=201)
async def new_bridge_enrollment(
    name: str, _t: Admin, ctx: Ctx, ttl: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = 86400
) -> dict[str, Any]:
    await bridges_of(ctx).get(name)
    token, expires = await ctx.registry.create_enrollment(name, ttl)
    return {"bridge": name, "enrollment_token": token, "expires_at": expires}


@router.post("/v1/bridges/{name}/disable")
async def disable_bridge(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await bridges_of(ctx).get(name)
    await ctx.registry.set_enabled(name, False)
    await ctx.credentials_changed()
    await ctx.controller.kick(_peer(name))
    return bridge_view(await bridges_of(ctx).get(name), wire.now_ms())


@router.post("/v1/bridges/{name}/enable")
async def enable_bridge(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await bridges_of(ctx).get(name)
    await ctx.registry.set_enabled(name, True)
    await ctx.credentials_changed()
    return bridge_view(await bridges_of(ctx).get(name), wire.now_ms())


@router.post("/v1/bridges/{name}/rotate")
async def rotate_bridge(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await bridges_of(ctx).get(name)
    secret = await ctx.registry.rotate_secret(name)
    await ctx.credentials_changed()
    await ctx.controller.kick(_peer(name))
    assert ctx.bridge_config is not None
    return {"bridge": name, "bridge_config": ctx.bridge_config(name, secret)}


@router.delete("/v1/bridges/{name}")
async def remove_bridge(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await bridges_of(ctx).remove(name)
    await ctx.credentials_changed()
    await ctx.controller.kick(_peer(name))
    return {"removed": name}
