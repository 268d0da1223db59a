"""The HTTP API for operators and client apps (FastAPI). Every route but /healthz needs a token."""

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud.api_maintenance import MaintenanceApi, add_maintenance_routes
from cloud.audit import Audit, audit_view
from cloud.bridges import Bridges, PrinterBle, bridge_view
from cloud.commands import CommandStore, command_view
from cloud.controller import Controller
from cloud.errors import ControllerError, NotFound
from cloud.jobs import JobStore, Submission, job_view
from cloud.models import ApiToken, Device
from cloud.registry import PrinterInput, Registry, device_view, printer_view
from kernel import wire

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 6 * 1024 * 1024
SCOPE_RANK = {"read": 0, "print": 1, "admin": 2}


@dataclass(frozen=True, kw_only=True)
class ApiContext:
    registry: Registry
    jobs: JobStore
    controller: Controller
    agent_config: Callable[[str, str], dict[str, Any]]
    health: Callable[[], Awaitable[dict[str, Any]]]
    audit: Audit
    #: Called after any change to who may connect (a no-op for the embedded broker, which reads
    #: credentials live; rewrites mosquitto's files and reloads it otherwise).
    credentials_changed: Callable[[], Awaitable[None]]
    commands: CommandStore
    bridges: Bridges | None = None
    bridge_config: Callable[[str, str], dict[str, Any]] | None = None
    #: Agent packages and rollouts (cloud/api_maintenance.py).
    maintenance: MaintenanceApi | None = None


class PrinterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    serial_url: str
    baud: int = 19200
    profile: str = "generic-80"
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"


class DeviceIn(PrinterBody):
    #: Issue a one-time enrolment token instead of returning the agent config.
    enroll: bool = False
    enroll_ttl: float = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class PrinterIn(PrinterBody):
    device: str


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64)
    scope: Literal["admin", "print", "read"]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    action: str = Field(min_length=1, max_length=32)
    target: str | None = Field(default=None, max_length=80)
    all: bool = False
    args: dict[str, Any] = Field(default_factory=dict)
    expires: float = Field(default=3600.0, ge=1, le=30 * 24 * 3600)
    timeout: float = Field(default=60.0, gt=0, le=24 * 3600)


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tags: list[str] = Field(max_length=32)


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    token: str = Field(min_length=8, max_length=128)
    #: What the caller enrols; a token for the other kind is refused and stays unused.
    kind: Literal["device", "bridge"] | None = None


class BridgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    near: list[str] = Field(default_factory=list, max_length=256)
    enroll: bool = False
    enroll_ttl: float = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class NearIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    near: list[str] = Field(max_length=256)


class PrinterBleIn(BaseModel):
    """Only the fields present change; ``null`` clears one."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ble_address: str | None = None
    ble_name: str | None = None
    ble_profile: str | None = None
    public_key: str | None = None
    identity: Literal["required", "preferred", "off"] = "preferred"
    latency_threshold_ms: int | None = None
    unique_id: str = Field(default="", max_length=64)


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    printer: str
    #: The bridge (a user's phone) the job comes from: tried first if the printer's path is degraded.
    origin: str | None = Field(default=None, alias="from", max_length=63)
    text: str | None = None
    document: dict[str, Any] | None = None
    raw_base64: str | None = None
    copies: int = Field(default=1, ge=1, le=100)
    priority: int = Field(default=0, ge=-100, le=100)
    ttl: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="printfleet", version="1", docs_url="/docs", redoc_url=None)

    @app.exception_handler(ControllerError)
    async def _controller_error(_req: Request, exc: ControllerError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"error": f"{loc}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.middleware("http")
    async def _limit_and_audit(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        response = await call_next(request)
        # every change, and every refused request, is recorded with who asked
        if request.method != "GET" or response.status_code in (401, 403):
            actor = getattr(request.state, "actor", None) or "anonymous"
            outcome = (
                "ok"
                if response.status_code < 400
                else ("denied" if response.status_code in (401, 403) else "error")
            )
            await ctx.audit.record(
                f"api:{actor}",
                f"{request.method} {request.url.path}",
                request.client.host if request.client else None,
                outcome=outcome,
                detail=f"HTTP {response.status_code}",
            )
        return response

    async def token(request: Request, authorization: Annotated[str | None, Header()] = None) -> ApiToken:
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

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = await ctx.health()
        return JSONResponse(body, status_code=200 if body.get("status") == "ok" else 503)

    # -- devices and printers -----------------------------------------------------------------

    @app.get("/v1/devices")
    async def list_devices(_t: Read) -> list[dict[str, Any]]:
        now = wire.now_ms()
        return [device_view(d, now) for d in await ctx.registry.list_devices()]

    async def host(name: str) -> Device:
        """A printer host by name; a bridge's name is not one (bridges have endpoints of their own,
        which also cut the right session)."""
        device = await ctx.registry.get_device(name)
        if device.kind != "device":
            raise NotFound(f"no device named {name!r} (it is a bridge: see printfleet bridge)")
        return device

    @app.get("/v1/devices/{name}")
    async def get_device(name: str, _t: Read) -> dict[str, Any]:
        return device_view(await host(name), wire.now_ms())

    @app.post("/v1/devices", status_code=201)
    async def add_device(body: DeviceIn, _t: Admin) -> dict[str, Any]:
        device, secret = await ctx.registry.add_device(
            body.name,
            PrinterInput(
                name=body.name,
                serial_url=body.serial_url,
                baud=body.baud,
                profile=body.profile,
                flow_control=body.flow_control,
            ),
        )
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

    @app.post("/v1/devices/{name}/enrollment", status_code=201)
    async def new_enrollment(
        name: str, _t: Admin, ttl: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = 86400
    ) -> dict[str, Any]:
        await host(name)
        token, expires = await ctx.registry.create_enrollment(name, ttl)
        return {"device": name, "enrollment_token": token, "expires_at": expires}

    @app.post("/v1/enroll")
    async def enroll(body: EnrollIn, request: Request) -> dict[str, Any]:
        """No bearer token: the one-time enrolment token is the credential."""
        device, secret = await ctx.registry.redeem_enrollment(body.token, body.kind)
        request.state.actor = f"enroll:{device}"
        await ctx.credentials_changed()
        if (await ctx.registry.get_device(device)).kind == "bridge" and ctx.bridge_config is not None:
            return {"bridge": device, "bridge_config": ctx.bridge_config(device, secret)}
        return {"device": device, "agent_config": ctx.agent_config(device, secret)}

    @app.post("/v1/devices/{name}/disable")
    async def disable_device(name: str, _t: Admin) -> dict[str, Any]:
        await host(name)
        device = await ctx.registry.set_enabled(name, False)
        await ctx.credentials_changed()
        await ctx.controller.device_disabled(name)
        return device_view(device, wire.now_ms())

    @app.post("/v1/devices/{name}/enable")
    async def enable_device(name: str, _t: Admin) -> dict[str, Any]:
        await host(name)
        device = await ctx.registry.set_enabled(name, True)
        await ctx.credentials_changed()
        return device_view(device, wire.now_ms())

    @app.post("/v1/devices/{name}/rotate")
    async def rotate_device(name: str, _t: Admin) -> dict[str, Any]:
        """New credentials for a device; its queued work stays queued for it."""
        await host(name)
        secret = await ctx.registry.rotate_secret(name)
        await ctx.credentials_changed()
        await ctx.controller.device_disabled(name)  # drop the session that used the old secret
        return {"device": name, "agent_config": ctx.agent_config(name, secret)}

    @app.delete("/v1/devices/{name}")
    async def remove_device(name: str, _t: Admin) -> dict[str, Any]:
        await host(name)
        printers = await ctx.registry.remove_device(name)
        await ctx.credentials_changed()
        await ctx.controller.device_removed(name, printers)
        return {"removed": name, "printers": printers}

    @app.get("/v1/printers")
    async def list_printers(_t: Read) -> list[dict[str, Any]]:
        return [printer_view(p) for p in await ctx.registry.list_printers()]

    @app.get("/v1/printers/{name}")
    async def get_printer(name: str, _t: Read) -> dict[str, Any]:
        return printer_view(await ctx.registry.get_printer(name))

    @app.post("/v1/printers", status_code=201)
    async def add_printer(body: PrinterIn, _t: Admin) -> dict[str, Any]:
        await host(body.device)
        printer = await ctx.registry.add_printer(
            body.device,
            PrinterInput(
                name=body.name,
                serial_url=body.serial_url,
                baud=body.baud,
                profile=body.profile,
                flow_control=body.flow_control,
            ),
        )
        await ctx.controller.push_config(body.device)
        return printer_view(printer)

    @app.delete("/v1/printers/{name}")
    async def remove_printer(name: str, _t: Admin) -> dict[str, Any]:
        device = await ctx.registry.remove_printer(name)
        await ctx.controller.printers_removed([name])
        await ctx.controller.push_config(device)
        return {"removed": name, "device": device}

    @app.post("/v1/printers/{name}/clear")
    async def clear_printer(name: str, tok: PrintScope) -> dict[str, Any]:
        """Cancel every job of a printer that has not started printing."""
        await ctx.registry.get_printer(name)
        results = [
            await ctx.controller.cancel_job(job.id, f"api:{tok.name}")
            for job in await ctx.jobs.open_jobs_for_printers([name])
        ]
        return {
            "printer": name,
            "cancelled": sum(1 for r in results if r["cancelled"]),
            "requested": sum(1 for r in results if not r["cancelled"] and r["state"] not in ("printing",)),
            "jobs": results,
        }

    # -- phone bridges and the printers' BLE side ----------------------------------------------

    def bridges() -> Bridges:
        if ctx.bridges is None or ctx.bridge_config is None:
            raise ControllerError("bridges are not available on this controller", status=404)
        return ctx.bridges

    @app.patch("/v1/printers/{name}/ble")
    async def set_printer_ble(name: str, body: PrinterBleIn, _t: Admin) -> dict[str, Any]:
        given = {k: getattr(body, k) for k in body.model_fields_set}
        printer = await bridges().set_printer_ble(name, PrinterBle(**given))
        return printer_view(await ctx.registry.get_printer(printer.name))

    @app.get("/v1/bridges")
    async def list_bridges(_t: Read) -> list[dict[str, Any]]:
        now = wire.now_ms()
        return [bridge_view(b, now) for b in await bridges().list()]

    @app.get("/v1/bridges/{name}")
    async def get_bridge(name: str, _t: Read) -> dict[str, Any]:
        return bridge_view(await bridges().get(name), wire.now_ms())

    @app.post("/v1/bridges", status_code=201)
    async def add_bridge(body: BridgeIn, _t: Admin) -> dict[str, Any]:
        bridge, secret = await bridges().add(body.name, body.near)
        await ctx.credentials_changed()
        view = bridge_view(bridge, wire.now_ms())
        if body.enroll:
            token, expires = await ctx.registry.create_enrollment(bridge.name, body.enroll_ttl)
            return {"bridge": view, "enrollment_token": token, "expires_at": expires}
        assert ctx.bridge_config is not None
        return {"bridge": view, "bridge_config": ctx.bridge_config(bridge.name, secret)}

    @app.post("/v1/bridges/{name}/near")
    async def set_bridge_near(name: str, body: NearIn, _t: Admin) -> dict[str, Any]:
        return bridge_view(await bridges().set_near(name, body.near), wire.now_ms())

    @app.post("/v1/bridges/{name}/enrollment", status_code=201)
    async def new_bridge_enrollment(
        name: str, _t: Admin, ttl: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = 86400
    ) -> dict[str, Any]:
        await bridges().get(name)
        token, expires = await ctx.registry.create_enrollment(name, ttl)
        return {"bridge": name, "enrollment_token": token, "expires_at": expires}

    @app.post("/v1/bridges/{name}/disable")
    async def disable_bridge(name: str, _t: Admin) -> dict[str, Any]:
        await bridges().get(name)
        await ctx.registry.set_enabled(name, False)
        await ctx.credentials_changed()
        await ctx.controller.kick(wire.Peer(role=wire.Role.BRIDGE, name=name))
        return bridge_view(await bridges().get(name), wire.now_ms())

    @app.post("/v1/bridges/{name}/enable")
    async def enable_bridge(name: str, _t: Admin) -> dict[str, Any]:
        await bridges().get(name)
        await ctx.registry.set_enabled(name, True)
        await ctx.credentials_changed()
        return bridge_view(await bridges().get(name), wire.now_ms())

    @app.post("/v1/bridges/{name}/rotate")
    async def rotate_bridge(name: str, _t: Admin) -> dict[str, Any]:
        await bridges().get(name)
        secret = await ctx.registry.rotate_secret(name)
        await ctx.credentials_changed()
        await ctx.controller.kick(wire.Peer(role=wire.Role.BRIDGE, name=name))
        assert ctx.bridge_config is not None
        return {"bridge": name, "bridge_config": ctx.bridge_config(name, secret)}

    @app.delete("/v1/bridges/{name}")
    async def remove_bridge(name: str, _t: Admin) -> dict[str, Any]:
        await bridges().remove(name)
        await ctx.credentials_changed()
        await ctx.controller.kick(wire.Peer(role=wire.Role.BRIDGE, name=name))
        return {"removed": name}

    # -- jobs ---------------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=201)
    async def submit_job(
        body: JobIn,
        tok: PrintScope,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        given = [k for k in ("text", "document", "raw_base64") if getattr(body, k) is not None]
        if len(given) != 1:
            raise ControllerError("give exactly one of text, document, raw_base64", status=422)
        content: Any
        kind: Literal["text", "doc", "raw"]
        if body.text is not None:
            kind, content = "text", body.text
        elif body.document is not None:
            kind, content = "doc", body.document
        else:
            kind = "raw"
            try:
                content = base64.b64decode(body.raw_base64 or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ControllerError("raw_base64 is not valid base64", status=422) from exc
        key = body.idempotency_key or idempotency_key
        job, created = await ctx.jobs.submit(
            Submission(
                printer=body.printer,
                kind=kind,
                content=content,
                copies=body.copies,
                priority=body.priority,
                ttl_s=body.ttl,
                idempotency_key=key,
                client=tok.name,
                origin=body.origin,
            )
        )
        if created:
            ctx.controller.wake_outbox()
        return JSONResponse(job_view(job, events=True), status_code=201 if created else 200)

    @app.get("/v1/jobs")
    async def list_jobs(
        _t: Read,
        printer: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return [job_view(j) for j in await ctx.jobs.list(printer=printer, state=state, limit=limit)]

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, _t: Read) -> dict[str, Any]:
        return job_view(await ctx.jobs.get(job_id), events=True)

    @app.get("/v1/jobs/{job_id}/wait")
    async def wait_job(
        job_id: str, _t: Read, timeout: Annotated[float, Query(gt=0, le=300)] = 30.0
    ) -> dict[str, Any]:
        """Long-poll: answer when the job is terminal, or with its current state at the timeout."""
        job = await ctx.jobs.feed.wait_until(
            lambda: ctx.jobs.get(job_id),
            lambda j: wire.JobState(j.state).terminal,
            key="job",
            record_id=job_id,
            timeout=timeout,
        )
        return job_view(job, events=True)

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, tok: PrintScope) -> dict[str, Any]:
        return await ctx.controller.cancel_job(job_id, f"api:{tok.name}")

    @app.post("/v1/jobs/{job_id}/reprint", status_code=201)
    async def reprint_job(job_id: str, tok: PrintScope) -> dict[str, Any]:
        job = await ctx.jobs.reprint(job_id, tok.name)
        ctx.controller.wake_outbox()
        return job_view(job, events=True)

    # -- maintenance commands -----------------------------------------------------------------

    @app.post("/v1/devices/{name}/tags")
    async def set_tags(name: str, body: TagsIn, _t: Admin) -> dict[str, Any]:
        for tag in body.tags:
            try:
                wire.check_name(tag, "tag")
            except wire.WireError as exc:
                raise ControllerError(str(exc)) from exc
        await host(name)
        device = await ctx.registry.set_tags(name, sorted(set(body.tags)))
        return device_view(device, wire.now_ms())

    @app.post("/v1/commands", status_code=201)
    async def create_commands(body: CommandIn, tok: Admin) -> dict[str, Any]:
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

    @app.get("/v1/commands")
    async def list_commands(
        _t: Read,
        device: str | None = None,
        rollout: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    ) -> list[dict[str, Any]]:
        return [command_view(c) for c in await ctx.commands.list(device=device, rollout=rollout, limit=limit)]

    @app.get("/v1/commands/{command_id}")
    async def get_command(command_id: str, _t: Read) -> dict[str, Any]:
        return command_view(await ctx.commands.get(command_id), events=True)

    @app.get("/v1/commands/{command_id}/wait")
    async def wait_command(
        command_id: str, _t: Read, timeout: Annotated[float, Query(gt=0, le=3600)] = 30.0
    ) -> dict[str, Any]:
        cmd = await ctx.commands.feed.wait_until(
            lambda: ctx.commands.get(command_id),
            lambda c: wire.CommandState(c.state).terminal,
            key="command",
            record_id=command_id,
            timeout=timeout,
        )
        return command_view(cmd, events=True)

    @app.post("/v1/commands/{command_id}/cancel")
    async def cancel_command(command_id: str, tok: Admin) -> dict[str, Any]:
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

    if ctx.maintenance is not None:
        add_maintenance_routes(app, ctx.maintenance, need)

    # -- tokens and audit ---------------------------------------------------------------------

    @app.get("/v1/tokens")
    async def list_tokens(_t: Admin) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "scope": t.scope, "created_at": t.created_at, "revoked_at": t.revoked_at}
            for t in await ctx.registry.list_tokens()
        ]

    @app.post("/v1/tokens", status_code=201)
    async def create_token(body: TokenIn, _t: Admin) -> dict[str, Any]:
        token = await ctx.registry.create_token(body.name, body.scope)
        return {"name": body.name, "scope": body.scope, "token": token}

    @app.delete("/v1/tokens/{name}")
    async def revoke_token(name: str, tok: Admin) -> dict[str, Any]:
        if name == tok.name:
            raise ControllerError("a token cannot revoke itself", status=409)
        await ctx.registry.revoke_token(name)
        return {"revoked": name}

    @app.get("/v1/keys")
    async def list_keys(_t: Admin) -> list[dict[str, object]]:
        peers = [*await ctx.registry.list_devices(), *await ctx.registry.list_devices("bridge")]
        trust = [(d.name, d.trusted_kids) for d in peers]
        return ctx.controller.keyring.describe(trust)

    @app.post("/v1/keys/rotate")
    async def rotate_keys(_t: Admin) -> dict[str, Any]:
        """A new signing key; every device is sent the new key list, signed by a key it trusts."""
        new = await ctx.controller.rotate_keys()
        return {"active": new.kid, "keys": [k.kid for k in ctx.controller.keyring.keys]}

    @app.delete("/v1/keys/{kid}")
    async def retire_key(kid: str, _t: Admin) -> dict[str, Any]:
        peers = [*await ctx.registry.list_devices(), *await ctx.registry.list_devices("bridge")]
        still = [
            d.name
            for d in peers
            if d.trusted_kids
            and kid in d.trusted_kids
            and ctx.controller.keyring.active.kid not in d.trusted_kids
        ]
        if still:
            raise ControllerError(
                f"devices still trust only this key: {', '.join(still)}; they would be cut off", status=409
            )
        ctx.controller.keyring.retire(kid)
        return {"retired": kid}

    @app.get("/v1/audit")
    async def audit(
        _t: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            audit_view(e)
            for e in await ctx.audit.list(limit=limit, actor=actor, action=action, outcome=outcome)
        ]

    @app.get("/v1/events")
    async def events(_t: Read, printer: str | None = None) -> StreamingResponse:
        """Job transitions as they happen, one JSON object per line."""

        async def stream() -> AsyncIterator[bytes]:
            async with ctx.jobs.feed.subscribe() as q:
                yield b'{"type":"hello"}\n'
                while True:
                    try:
                        event = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b'{"type":"keepalive"}\n'
                        continue
                    if printer is None or event["printer"] == printer:
                        yield (json.dumps({"type": "job", **event}) + "\n").encode()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    return app
