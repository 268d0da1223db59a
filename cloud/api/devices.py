"""``/v1/devices``: printer hosts (add, enrol, disable, enable, rotate, remove, tags)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import Admin, Ctx, Read, host
from cloud.errors import ControllerError
from cloud.registry import PrinterInput, device_view
from kernel import wire

router = APIRouter()


class PrinterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    serial_url: str
    baud: int = 19200
    profile: str = "generic-80"
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"

    def printer_input(self) -> PrinterInput:
        return PrinterInput(
            name=self.name,
            serial_url=self.serial_url,
            baud=self.baud,
            profile=self.profile,
            flow_control=self.flow_control,
        )


class DeviceIn(PrinterBody):
    #: Issue a one-time enrolment token instead of returning the agent config.
    enroll: bool = False
    enroll_ttl: float = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tags: list[str] = Field(max_length=32)


@router.get("/v1/devices")
async def list_devices(_t: Read, ctx: Ctx) -> list[dict[str, Any]]:
    now = wire.now_ms()
    return [device_view(d, now) for d in await ctx.registry.list_devices()]


@router.get("/v1/devices/{name}")
async def get_device(name: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    return device_view(await host(ctx, name), wire.now_ms())


@router.post("/v1/devices", status_code=201)
async def add_device(body: DeviceIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    device, secret = await ctx.registry.add_device(body.name, body.printer_input())
    await ctx.credentials_changed()
    if body.enroll:
        token, expires = await ctx.registry.create_enrollment(device.name, body.enroll_ttl)
        return {
            "device": device_view(device, wire.now_ms()),
            "enrollment_token": token,
            "expires_at": expires,
        }
    return {
        "device": device_view(device, wire.now_ms()),
        "agent_config": ctx.agent_config(device.name, secret),
    }


@router.post("/v1/devices/{name}/enrollment", status_code=201)
async def new_enrollment(
    name: str, _t: Admin, ctx: Ctx, ttl: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = 86400
) -> dict[str, Any]:
    await host(ctx, name)
    token, expires = await ctx.registry.create_enrollment(name, ttl)
    return {"device": name, "enrollment_token": token, "expires_at": expires}


@router.post("/v1/devices/{name}/disable")
async def disable_device(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await host(ctx, name)
    device = await ctx.registry.set_enabled(name, False)
    await ctx.credentials_changed()
    await ctx.controller.device_disabled(name)
    return device_view(device, wire.now_ms())


@router.post("/v1/devices/{name}/enable")
async def enable_device(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await host(ctx, name)
    device = await ctx.registry.set_enabled(name, True)
    await ctx.credentials_changed()
    return device_view(device, wire.now_ms())


@router.post("/v1/devices/{name}/rotate")
async def rotate_device(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    """New credentials for a device; its queued work stays queued for it."""
    await host(ctx, name)
    secret = await ctx.registry.rotate_secret(name)
    await ctx.credentials_changed()
    await ctx.controller.device_disabled(name)  # drop the session that used the old secret
    return {"device": name, "agent_config": ctx.agent_config(name, secret)}


@router.delete("/v1/devices/{name}")
async def remove_device(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await host(ctx, name)
    printers = await ctx.registry.remove_device(name)
    await ctx.credentials_changed()
    await ctx.controller.device_removed(name, printers)
    return {"removed": name, "printers": printers}


@router.post("/v1/devices/{name}/tags")
async def set_tags(name: str, body: TagsIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    for tag in body.tags:
        try:
            wire.check_name(tag, "tag")
        except wire.WireError as exc:
            raise ControllerError(str(exc)) from exc
    await host(ctx, name)
    device = await ctx.registry.set_tags(name, sorted(set(body.tags)))
    return device_view(device, wire.now_ms())
