"""``/v1/commands``: maintenance commands (create for a device, a tag or all; list, wait, cancel)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import Admin, Ctx, Read
from cloud.commands import command_view
from cloud.errors import ControllerError
from kernel import wire

router = APIRouter()


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    action: str = Field(min_length=1, max_length=32)
    target: str | None = Field(default=None, max_length=80)
    all: bool = False
    args: dict[str, Any] = Field(default_factory=dict)
    expires: float = Field(default=3600.0, ge=1, le=30 * 24 * 3600)
    timeout: float = Field(default=60.0, gt=0, le=24 * 3600)


@router.post("/v1/commands", status_code=201)
async def create_commands(body: CommandIn, tok: Admin, ctx: Ctx) -> dict[str, Any]:
    if body.all == (body.target is not None):
        raise ControllerError("give a target (device name or tag:NAME) or all, not both", status=422)
    devices = await ctx.commands.targets(body.target, all_devices=body.all)
    created = await ctx.commands.create(
        devices,
        body.action,
        body.args,
        requested_by=f"api:{tok.name}",
        expires_s=body.expires,
        timeout_s=body.timeout,
    )
    ctx.controller.wake_outbox()
    return {"commands": [command_view(c) for c in created]}


@router.get("/v1/commands")
async def list_commands(
    _t: Read,
    ctx: Ctx,
    device: str | None = None,
    rollout: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> list[dict[str, Any]]:
    return [command_view(c) for c in await ctx.commands.list(device=device, rollout=rollout, limit=limit)]


@router.get("/v1/commands/{command_id}")
async def get_command(command_id: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    return command_view(await ctx.commands.get(command_id), events=True)


@router.get("/v1/commands/{command_id}/wait")
async def wait_command(
    command_id: str, _t: Read, ctx: Ctx, timeout: Annotated[float, Query(gt=0, le=3600)] = 30.0
) -> dict[str, Any]:
    cmd = await ctx.commands.feed.wait_until(
        lambda: ctx.commands.get(command_id),
        lambda c: wire.CommandState(c.state).terminal,
        key="command",
        record_id=command_id,
        timeout=timeout,
    )
    return command_view(cmd, events=True)


@router.post("/v1/commands/{command_id}/cancel")
async def cancel_command(command_id: str, tok: Admin, ctx: Ctx) -> dict[str, Any]:
    done = await ctx.commands.transition(
        command_id,
        wire.CommandState.CANCELLED,
        detail="cancelled before delivery",
        source=f"api:{tok.name}",
        only_from=frozenset({wire.CommandState.QUEUED}),
    )
    cmd = await ctx.commands.get(command_id)
    if not done:
        raise ControllerError(
            f"command {command_id} is {cmd.state}: only a queued command can be cancelled", status=409
        )
    return command_view(cmd, events=True)
