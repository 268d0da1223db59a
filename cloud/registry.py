"""The registry: devices, their printers, operator API tokens, and the broker's credential view."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from broker.credentials import Credential
from broker.passwords import generate_secret, hash_password, verify_password
from cloud.errors import Conflict, ControllerError, NotFound
from cloud.models import ApiToken, Device, EnrollmentToken, Printer, Setting
from kernel import wire
from kernel.escpos.profiles import PROFILE_NAMES, get_profile

log = logging.getLogger(__name__)

SERIAL_SCHEMES = ("socket", "loop", "rfc2217", "spy", "hwgrep", "alt")
FLOW_CONTROLS = ("none", "rtscts", "xonxoff")
SCOPES = ("admin", "print", "read")
CONTROLLER_SECRET_KEY = "controller_secret_hash"
#: What each kind of ``devices`` row is called in messages.
_KIND_NAMES = {"device": "printer host", "bridge": "bridge"}


def check_serial_url(url: str) -> str:
    """Accept what pyserial's ``serial_for_url`` opens: a device path or a known URL scheme."""
    if not isinstance(url, str) or not url or len(url) > 512 or any(c in url for c in "\n\r\0"):
        raise ControllerError("invalid serial URL: expected a device path or socket://HOST:PORT")
    if url.startswith("/") or url.upper().startswith("COM"):
        return url
    scheme = urlsplit(url).scheme
    if scheme not in SERIAL_SCHEMES:
        raise ControllerError(
            f"invalid serial URL {url!r}: expected a device path (/dev/ttyUSB0) or one of "
            + ", ".join(f"{s}://" for s in SERIAL_SCHEMES)
        )
    if scheme == "socket":
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ControllerError(f"invalid serial URL {url!r}: socket:// needs HOST:PORT")
    return url


@dataclass(frozen=True, kw_only=True)
class PrinterInput:
    name: str
    serial_url: str
    baud: int = 19200
    profile: str = "generic-80"
    flow_control: str = "none"

    def validated(self) -> PrinterInput:
        try:
            wire.check_name(self.name, "printer name")
        except wire.WireError as exc:
            raise ControllerError(str(exc)) from exc
        check_serial_url(self.serial_url)
        if not 300 <= self.baud <= 4_000_000:
            raise ControllerError(f"invalid baud rate {self.baud}")
        if self.profile not in PROFILE_NAMES:
            raise ControllerError(
                f"unknown printer profile {self.profile!r}; known: {', '.join(PROFILE_NAMES)}"
            )
        if self.flow_control not in FLOW_CONTROLS:
            raise ControllerError(
                f"invalid flow control {self.flow_control!r}; use one of {', '.join(FLOW_CONTROLS)}"
            )
        return self


def printer_spec(printer: Printer) -> wire.PrinterSpec:
    profile = get_profile(printer.profile)
    return wire.PrinterSpec(
        name=printer.name,
        serial_url=printer.serial_url,
        baud=printer.baud,
        profile=printer.profile,
        flow_control=printer.flow_control,
        status_queries=profile.status_queries,
        asb=profile.asb,
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Registry:
    """Devices, printers and tokens, over an async session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # -- devices ------------------------------------------------------------------------------

    async def add_device(self, name: str, printer: PrinterInput) -> tuple[Device, str]:
        """Register a host with its first printer (named like the host); return it and its secret."""
        try:
            wire.check_name(name, "device name")
        except wire.WireError as exc:
            raise ControllerError(str(exc)) from exc
        printer = printer.validated()
        secret = generate_secret()
        now = wire.now_ms()
        async with self._sessions.begin() as s:
            if await s.scalar(select(Device.id).where(Device.name == name)) is not None:
                raise Conflict(f"device {name!r} already exists")
            await self._check_printer_free(s, printer.name)
            device = Device(
                name=name, secret_hash=hash_password(secret), created_at=now, config_version=1, tags=[]
            )
            device.printers.append(self._new_printer(printer, now))
            s.add(device)
        return await self.get_device(name), secret

    async def rotate_secret(self, name: str) -> str:
        """Issue a new MQTT secret for a device (the old one stops working at its next connect)."""
        secret = generate_secret()
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            device.secret_hash = hash_password(secret)
        return secret

    async def set_enabled(self, name: str, enabled: bool) -> Device:
        """Disable (credentials refused, nothing sent; queued work kept) or enable a device."""
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            device.enabled = enabled
            if not enabled:
                device.online = False
                device.offline_reason = "disabled"
        return await self.get_device(name)

    async def create_enrollment(self, name: str, ttl_s: float) -> tuple[str, int]:
        """A one-time token for a registered device; returns (token, expires_at)."""
        if not 60 <= ttl_s <= 30 * 24 * 3600:
            raise ControllerError("enrolment token lifetime must be between 60 s and 30 days")
        token = "pfe_" + secrets.token_urlsafe(32)
        now = wire.now_ms()
        expires = now + int(ttl_s * 1000)
        async with self._sessions.begin() as s:
            await self._device(s, name)
            s.add(
                EnrollmentToken(
                    token_hash=hash_token(token), device_name=name, created_at=now, expires_at=expires
                )
            )
        return token, expires

    async def redeem_enrollment(self, token: str, kind: str | None = None) -> tuple[str, str]:
        """Exchange a token (once, before it expires) for the device's new secret: (device, secret).

        ``kind`` (``"device"`` or ``"bridge"``), when given, is what the caller means to enrol: a token
        for the other kind is refused and stays unused (the credentials in use keep working).
        """
        now = wire.now_ms()
        secret = generate_secret()
        async with self._sessions.begin() as s:
            row = await s.scalar(
                select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token))
            )
            if row is None:
                raise ControllerError("unknown enrolment token", status=403)
            if row.used_at is not None:
                raise ControllerError("enrolment token already used", status=403)
            if now > row.expires_at:
                raise ControllerError("enrolment token expired", status=403)
            device = await self._device(s, row.device_name)
            if kind is not None and device.kind != kind:
                raise ControllerError(
                    f"this token enrols a {_KIND_NAMES.get(device.kind, device.kind)},"
                    f" not a {_KIND_NAMES.get(kind, kind)}",
                    status=409,
                )
            row.used_at = now
            device.secret_hash = hash_password(secret)
            return device.name, secret

    async def set_tags(self, name: str, tags: list[str]) -> Device:
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            device.tags = tags
        return await self.get_device(name)

    async def list_tokens(self) -> Sequence[ApiToken]:
        async with self._sessions() as s:
            return (await s.scalars(select(ApiToken).order_by(ApiToken.name))).all()

    async def revoke_token(self, name: str) -> None:
        async with self._sessions.begin() as s:
            row = await s.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None:
                raise NotFound(f"no token named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = wire.now_ms()

    async def remove_device(self, name: str) -> list[str]:
        """Remove a host and its printers; returns the printers' names (their open jobs are the caller's)."""
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            printer_names = [p.name for p in device.printers]
            await s.delete(device)
        return printer_names

    async def get_device(self, name: str) -> Device:
        async with self._sessions() as s:
            return await self._device(s, name)

    async def list_devices(self, kind: str = "device") -> Sequence[Device]:
        """Printer hosts (``kind="device"``) or phone bridges (``kind="bridge"``)."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(Device)
                .where(Device.kind == kind)
                .options(selectinload(Device.printers))
                .order_by(Device.name)
            )
            return rows.all()

    async def _device(self, s: AsyncSession, name: str) -> Device:
        device = await s.scalar(
            select(Device).where(Device.name == name).options(selectinload(Device.printers))
        )
        if device is None:
            raise NotFound(f"no device named {name!r}")
        return device

    # -- printers -----------------------------------------------------------------------------

    async def add_printer(self, device_name: str, printer: PrinterInput) -> Printer:
        printer = printer.validated()
        now = wire.now_ms()
        async with self._sessions.begin() as s:
            device = await self._device(s, device_name)
            await self._check_printer_free(s, printer.name)
            device.printers.append(self._new_printer(printer, now))
            device.config_version += 1
        return await self.get_printer(printer.name)

    async def remove_printer(self, name: str) -> str:
        """Remove a printer; returns its device's name (whose agent must be told)."""
        async with self._sessions.begin() as s:
            printer = await self._printer(s, name)
            device = printer.device
            if len(device.printers) <= 1:
                raise ControllerError(
                    f"printer {name!r} is the only printer of device {device.name!r};"
                    " remove the device instead"
                )
            device.config_version += 1
            await s.delete(printer)
            return device.name

    async def set_printer_port(self, name: str, serial_url: str) -> str:
        """Point a printer at another port; returns its device's name (whose agent must be told)."""
        check_serial_url(serial_url)
        async with self._sessions.begin() as s:
            printer = await self._printer(s, name)
            if printer.serial_url != serial_url:
                printer.serial_url = serial_url
                printer.device.config_version += 1
            return printer.device.name

    async def get_printer(self, name: str) -> Printer:
        async with self._sessions() as s:
            return await self._printer(s, name)

    async def list_printers(self) -> Sequence[Printer]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(Printer).options(selectinload(Printer.device)).order_by(Printer.name)
            )
            return rows.all()

    async def _printer(self, s: AsyncSession, name: str) -> Printer:
        printer = await s.scalar(
            select(Printer)
            .where(Printer.name == name)
            .options(selectinload(Printer.device).selectinload(Device.printers))
        )
        if printer is None:
            raise NotFound(f"no printer named {name!r}")
        return printer

    async def _check_printer_free(self, s: AsyncSession, name: str) -> None:
        if await s.scalar(select(Printer.id).where(Printer.name == name)) is not None:
            raise Conflict(f"printer {name!r} already exists")

    @staticmethod
    def _new_printer(p: PrinterInput, now: int) -> Printer:
        return Printer(
            name=p.name,
            serial_url=p.serial_url,
            baud=p.baud,
            profile=p.profile,
            flow_control=p.flow_control,
            created_at=now,
            unique_id=f"pf-{p.name}",
        )

    async def printers_config(self, device_name: str) -> wire.PrintersConfig:
        device = await self.get_device(device_name)
        return wire.PrintersConfig(
            version=device.config_version,
            printers=tuple(printer_spec(p) for p in sorted(device.printers, key=lambda p: p.name)),
        )

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(self, name: str, scope: str) -> str:
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise ControllerError("invalid token name: use letters, digits, '-' or '_' (at most 64)")
        if scope not in SCOPES:
            raise ControllerError(f"invalid scope {scope!r}; use one of {', '.join(SCOPES)}")
        token = "pft_" + secrets.token_urlsafe(32)
        async with self._sessions.begin() as s:
            if await s.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                raise Conflict(f"token {name!r} already exists")
            s.add(ApiToken(name=name, token_hash=hash_token(token), scope=scope, created_at=wire.now_ms()))
        return token

    async def ensure_admin_token(self, token: str) -> None:
        """Make sure the local admin token (kept in the data directory) is registered."""
        async with self._sessions.begin() as s:
            row = await s.scalar(select(ApiToken).where(ApiToken.name == "local-admin"))
            if row is None:
                s.add(
                    ApiToken(
                        name="local-admin",
                        token_hash=hash_token(token),
                        scope="admin",
                        created_at=wire.now_ms(),
                    )
                )
            elif row.token_hash != hash_token(token):
                row.token_hash = hash_token(token)
                row.revoked_at = None

    async def check_token(self, token: str) -> ApiToken | None:
        async with self._sessions() as s:
            row = await s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            if row is None or row.revoked_at is not None:
                return None
            return row

    async def ping(self) -> None:
        async with self._sessions() as s:
            await s.execute(text("SELECT 1"))

    # -- settings -----------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        async with self._sessions() as s:
            row = await s.get(Setting, key)
            return row.value if row else None

    async def set_setting(self, key: str, value: str) -> None:
        async with self._sessions.begin() as s:
            row = await s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value

    async def next_counter(self, key: str) -> int:
        async with self._sessions.begin() as s:
            row = await s.get(Setting, key)
            value = int(row.value) + 1 if row else 1
            if row is None:
                s.add(Setting(key=key, value=str(value)))
            else:
                row.value = str(value)
            return value

    async def ensure_controller_credential(self, secret: str) -> None:
        current = await self.get_setting(CONTROLLER_SECRET_KEY)
        if current is None or not verify_password(secret, current):
            await self.set_setting(CONTROLLER_SECRET_KEY, hash_password(secret))


class DbCredentials:
    """The broker's view of who may connect, read live from the registry on every CONNECT."""

    def __init__(self, registry: Registry, controller_name: str) -> None:
        self._registry = registry
        self._controller = wire.Peer(role=wire.Role.CONTROLLER, name=controller_name)

    async def lookup(self, username: str) -> Credential | None:
        try:
            peer = wire.Peer.from_client_id(username)
        except wire.WireError:
            return None
        if peer.role is wire.Role.CONTROLLER:
            if peer != self._controller:
                return None
            hashed = await self._registry.get_setting(CONTROLLER_SECRET_KEY)
            return Credential(peer=peer, password_hash=hashed) if hashed else None
        try:
            device = await self._registry.get_device(peer.name)
        except NotFound:
            return None
        if device.kind != ("bridge" if peer.role is wire.Role.BRIDGE else "device"):
            return None  # a bridge's credential never opens a device's session, nor the reverse
        return Credential(peer=peer, password_hash=device.secret_hash, enabled=device.enabled)

    async def all(self) -> list[Credential]:
        out: list[Credential] = []
        hashed = await self._registry.get_setting(CONTROLLER_SECRET_KEY)
        if hashed:
            out.append(Credential(peer=self._controller, password_hash=hashed))
        for kind, role in (("device", wire.Role.DEVICE), ("bridge", wire.Role.BRIDGE)):
            for device in await self._registry.list_devices(kind):
                out.append(
                    Credential(
                        peer=wire.Peer(role=role, name=device.name),
                        password_hash=device.secret_hash,
                        enabled=device.enabled,
                    )
                )
        return out


def device_view(device: Device, now: int) -> dict[str, Any]:
    """The API/CLI shape of a device with its printers."""
    return {
        "name": device.name,
        "online": device.online,
        "enabled": device.enabled,
        "session": device.session,
        "boot_id": device.boot_id,
        "agent_version": device.agent_version,
        "online_since": device.online_since,
        "last_seen_at": device.last_seen_at,
        "last_heartbeat_at": device.last_heartbeat_at,
        "last_heartbeat_age_s": None
        if device.last_heartbeat_at is None
        else round((now - device.last_heartbeat_at) / 1000, 1),
        "latency_ms": None if device.latency_ms is None else round(device.latency_ms, 1),
        "offline_reason": None if device.online else device.offline_reason,
        "tags": list(device.tags or []),
        "printers": [printer_view(p, device) for p in sorted(device.printers, key=lambda p: p.name)],
    }


def printer_view(printer: Printer, device: Device | None = None) -> dict[str, Any]:
    device = device or printer.device
    health = (
        wire.validate_model(wire.PrinterHealth, printer.health, "printer health") if printer.health else None
    )
    if health is None:
        status = "unknown"
    elif not device.online:
        status = "unreachable (host offline)"
    else:
        faults = health.faults
        status = "ready" if not faults else ", ".join(faults)
        if not faults and health.paper == "near_end":
            status = "ready (paper near end)"
    return {
        "name": printer.name,
        "device": device.name,
        "serial_url": printer.serial_url,
        "baud": printer.baud,
        "profile": printer.profile,
        "flow_control": printer.flow_control,
        "status": status,
        "health": printer.health,
        "health_at": printer.health_at,
        "unique_id": printer.unique_id,
        "ble": {
            "address": printer.ble_address,
            "name": printer.ble_name,
            "profile": printer.ble_profile,
            "public_key": printer.public_key,
            "identity": printer.identity,
        },
        "latency_threshold_ms": printer.latency_threshold_ms,
    }
