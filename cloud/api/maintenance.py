"""``/v1/packages``, ``/v1/updates`` and ``/v1/rollouts``: agent update packages (upload, facts,
the agents' download) and updates, at once or as a phased rollout."""

import asyncio
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.context import ApiContext, MaintenanceApi
from cloud.api.deps import Admin, Ctx, Read
from cloud.commands import command_view
from cloud.errors import ControllerError
from cloud.packages import MAX_UPLOAD_BYTES, package_view, update_args
from kernel import wire

log = logging.getLogger(__name__)

router = APIRouter()

#: The update's command timeout by default: download, install, restart and the health deadline.
DEFAULT_UPDATE_TIMEOUT_S = 600.0


def maintenance_of(ctx: ApiContext) -> MaintenanceApi:
    if ctx.maintenance is None:
        raise ControllerError("updates are not available on this controller", status=404)
    return ctx.maintenance


class UpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    target: str | None = Field(default=None, max_length=80)
    all: bool = False
    sha256: str = Field(pattern=wire.SHA256_RE)
    #: Where agents fetch the package; left out: the package uploaded to this controller.
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    health_s: float = Field(default=120.0, ge=1, le=3600)
    expires: float = Field(default=3600.0, ge=1, le=30 * 24 * 3600)
    timeout: float = Field(default=DEFAULT_UPDATE_TIMEOUT_S, gt=0, le=24 * 3600)
    #: Set: a phased rollout starting this many devices per minute.
    rate_per_min: float | None = Field(default=None, gt=0, le=6000)
    abort_above: float = Field(default=0.0, ge=0, le=100)


class ResumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    abort_above: float | None = Field(default=None, ge=0, le=100)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _check_url(url: str, controller_http: str | None) -> None:
    """Agents fetch over https, or from this controller; say so now rather than on every host."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ControllerError("--package URL must be an http(s):// URL", status=422)
    if parts.scheme == "https" or (controller_http is not None and _origin(url) == _origin(controller_http)):
        return
    raise ControllerError(
        f"agents download only over https or from this controller ({controller_http}): refusing {url}",
        status=422,
    )


# -- packages -----------------------------------------------------------------------------


@router.put("/v1/packages/{sha256}")
async def upload_package(sha256: str, request: Request, tok: Admin, ctx: Ctx) -> JSONResponse:
    """The package's bytes as the body; stored once (an upload of a known package is a no-op)."""
    m = maintenance_of(ctx)
    data = await request.body()
    if len(data) > MAX_UPLOAD_BYTES:
        raise ControllerError(f"package over the {MAX_UPLOAD_BYTES}-byte limit", status=413)
    pkg, created = await asyncio.to_thread(m.packages.put, data, sha256, uploaded_by=f"api:{tok.name}")
    return JSONResponse(package_view(pkg), status_code=201 if created else 200)


@router.get("/v1/packages")
async def list_packages(_t: Read, ctx: Ctx) -> list[dict[str, Any]]:
    m = maintenance_of(ctx)
    return [package_view(p) for p in await asyncio.to_thread(m.packages.list)]


@router.get("/v1/packages/{sha256}")
async def get_package(sha256: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    m = maintenance_of(ctx)
    return package_view(await asyncio.to_thread(m.packages.get, sha256))


@router.get("/v1/packages/{sha256}/{filename}")
async def download_package(
    sha256: str,
    filename: str,
    ctx: Ctx,
    until: Annotated[int, Query(ge=0)],
    grant: Annotated[str, Query(min_length=64, max_length=64)],
) -> FileResponse:
    """For agents (no API token): the download grant of a signed update command is the credential."""
    m = maintenance_of(ctx)
    if not m.packages.check_grant(sha256, until, grant, wire.now_ms()):
        raise ControllerError("invalid or expired download grant", status=403)
    pkg = await asyncio.to_thread(m.packages.get, sha256)
    if filename != pkg.filename:
        raise ControllerError(f"package {sha256} is {pkg.filename}", status=404)
    return FileResponse(m.packages.path(sha256), media_type="application/octet-stream", filename=filename)


# -- updates and rollouts -----------------------------------------------------------------


@router.post("/v1/updates", status_code=201)
async def create_update(body: UpdateIn, tok: Admin, ctx: Ctx) -> dict[str, Any]:
    """Update agents: at once (commands), or as a phased rollout when ``rate_per_min`` is set."""
    m = maintenance_of(ctx)
    if body.all == (body.target is not None):
        raise ControllerError("give a target (device name or tag:NAME) or all, not both", status=422)
    if body.health_s >= body.timeout:
        raise ControllerError("the health deadline must be shorter than --timeout", status=422)
    version = None
    if body.url is None:
        version = (await asyncio.to_thread(m.packages.get, body.sha256)).version
    else:
        _check_url(body.url, m.controller_http())
    devices = await m.commands.targets(body.target, all_devices=body.all)
    spec = {"sha256": body.sha256, "url": body.url, "version": version, "health_s": body.health_s}
    requested_by = f"api:{tok.name}"
    if body.rate_per_min is not None:
        rollout = await m.rollouts.create(
            devices=devices,
            action="update",
            args=spec,
            target=body.target or "all",
            rate_per_min=body.rate_per_min,
            abort_above_pct=body.abort_above,
            requested_by=requested_by,
            expires_s=body.expires,
            timeout_s=body.timeout,
        )
        return {"rollout": await m.rollouts.view(rollout.id)}
    until = wire.now_ms() + int((body.expires + body.timeout + 60) * 1000)
    build = update_args(m.packages)
    created = await m.commands.create(
        devices,
        "update",
        await asyncio.to_thread(build, spec, until),
        requested_by=requested_by,
        expires_s=body.expires,
        timeout_s=body.timeout,
    )
    m.wake_outbox()
    return {"commands": [command_view(c) for c in created]}


@router.get("/v1/rollouts")
async def list_rollouts(
    _t: Read, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    m = maintenance_of(ctx)
    views = [await m.rollouts.view(r.id) for r in await m.rollouts.list(limit)]
    return [{k: v for k, v in view.items() if k != "devices"} for view in views]


@router.get("/v1/rollouts/{rollout_id}")
async def get_rollout(rollout_id: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    m = maintenance_of(ctx)
    return await m.rollouts.view(rollout_id)


@router.get("/v1/rollouts/{rollout_id}/wait")
async def wait_rollout(
    rollout_id: str,
    _t: Read,
    ctx: Ctx,
    known: str | None = None,
    timeout: Annotated[float, Query(gt=0, le=300)] = 30.0,
) -> dict[str, Any]:
    """Long-poll: the rollout once its progress differs from ``known`` (or at the timeout)."""
    m = maintenance_of(ctx)
    return await m.rollouts.wait(rollout_id, known=known, timeout=timeout)


@router.post("/v1/rollouts/{rollout_id}/resume")
async def resume_rollout(rollout_id: str, body: ResumeIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    m = maintenance_of(ctx)
    await m.rollouts.resume(rollout_id, abort_above_pct=body.abort_above)
    return await m.rollouts.view(rollout_id)
