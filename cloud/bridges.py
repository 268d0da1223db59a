"""Phone bridges in the registry, and the BLE side of each printer's record.

A bridge is a row of ``devices`` with ``kind = "bridge"``: it shares credentials, presence,
enable/disable, rotation and enrolment with printer hosts, but its MQTT identity is ``brg-NAME``
(its own topic subtree, confined by the same ACL rules) and it holds no printers; ``near`` lists
the printers it can reach over BLE.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.passwords import generate_secret, hash_password
from cloud.errors import Conflict, ControllerError, NotFound
from cloud.models import Device, Printer
from kernel import wire
from kernel.gatt import PROFILES, decode_public_key

#: A BLE device address as bleak spells it: a MAC (Linux, Windows, Android) or a UUID (macOS/iOS).
_ADDRESS_RE = re.compile(
    r"^(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12})$"
)
_UNIQUE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
PROFILE_NAMES = tuple(p.name for p in PROFILES)
POLICIES: tuple[str, ...] = get_args(wire.IdentityPolicy)

#: Marks a field the operator did not mention (None means "clear it").
UNSET: Any = object()


@dataclass(frozen=True, kw_only=True)
class PrinterBle:
    """Changes to a printer's BLE side; fields left UNSET are kept."""

    ble_address: str | None = UNSET
    ble_name: str | None = UNSET
    ble_profile: str | None = UNSET
    public_key: str | None = UNSET
    identity: str = UNSET
    latency_threshold_ms: int | None = UNSET
    unique_id: str = UNSET

    def validated(self) -> dict[str, Any]:
        """The columns to write, each checked; a :class:`ControllerError` names the first bad one."""
        out: dict[str, Any] = {}
        if self.ble_address is not UNSET:
            if self.ble_address is not None and not _ADDRESS_RE.fullmatch(self.ble_address):
                raise ControllerError(
                    f"invalid BLE address {self.ble_address!r}: expected AA:BB:CC:DD:EE:FF"
                    " (or a platform UUID on macOS/iOS)"
                )
            out["ble_address"] = self.ble_address.upper() if self.ble_address else None
        if self.ble_name is not UNSET:
            if self.ble_name is not None and not 1 <= len(self.ble_name) <= 64:
                raise ControllerError("BLE name must be 1 to 64 characters")
            out["ble_name"] = self.ble_name
        if self.ble_profile is not UNSET:
            if self.ble_profile is not None and self.ble_profile not in PROFILE_NAMES:
                raise ControllerError(
                    f"unknown BLE profile {self.ble_profile!r}; known: {', '.join(PROFILE_NAMES)}"
                )
            out["ble_profile"] = self.ble_profile
        if self.public_key is not UNSET:
            if self.public_key is not None:
                try:
                    decode_public_key(self.public_key)
                except ValueError as exc:
                    raise ControllerError(f"invalid printer public key: {exc}") from exc
            out["public_key"] = self.public_key
        if self.identity is not UNSET:
            if self.identity not in POLICIES:
                raise ControllerError(f"identity must be one of {', '.join(POLICIES)}")
            out["identity"] = self.identity
        if self.latency_threshold_ms is not UNSET:
            value = self.latency_threshold_ms
            if value is not None and not 1 <= value <= 600_000:
                raise ControllerError("latency threshold must be between 1 and 600000 ms")
            out["latency_threshold_ms"] = value
        if self.unique_id is not UNSET:
            if not isinstance(self.unique_id, str) or not _UNIQUE_ID_RE.fullmatch(self.unique_id):
                raise ControllerError("unique id must be 1-64 letters, digits, '_', '.', ':' or '-'")
            out["unique_id"] = self.unique_id
        return out


class Bridges:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, name: str, near: Sequence[str]) -> tuple[Device, str]:
        """Register a bridge near some printers; return it and its MQTT secret."""
        try:
            wire.check_name(name, "bridge name")
        except wire.WireError as exc:
            raise ControllerError(str(exc)) from exc
        secret = generate_secret()
        async with self._sessions.begin() as s:
            if await s.scalar(select(Device.id).where(Device.name == name)) is not None:
                raise Conflict(f"a device or bridge named {name!r} already exists")
            await self._check_printers(s, near)
            s.add(
                Device(
                    name=name,
                    kind="bridge",
                    near=sorted(set(near)),
                    secret_hash=hash_password(secret),
                    created_at=wire.now_ms(),
                    tags=[],
                )
            )
        return await self.get(name), secret

    async def set_near(self, name: str, near: Sequence[str]) -> Device:
        async with self._sessions.begin() as s:
            bridge = await self._bridge(s, name)
            await self._check_printers(s, near)
            bridge.near = sorted(set(near))
        return await self.get(name)

    async def get(self, name: str) -> Device:
        async with self._sessions() as s:
            return await self._bridge(s, name)

    async def list(self) -> Sequence[Device]:
        async with self._sessions() as s:
            return (
                await s.scalars(select(Device).where(Device.kind == "bridge").order_by(Device.name))
            ).all()

    async def remove(self, name: str) -> None:
        async with self._sessions.begin() as s:
            await s.delete(await self._bridge(s, name))

    async def set_printer_ble(self, printer: str, change: PrinterBle) -> Printer:
        values = change.validated()
        async with self._sessions.begin() as s:
            row = await s.scalar(select(Printer).where(Printer.name == printer))
            if row is None:
                raise NotFound(f"no printer named {printer!r}")
            for key, value in values.items():
                setattr(row, key, value)
        async with self._sessions() as s:
            found = await s.scalar(select(Printer).where(Printer.name == printer))
            assert found is not None
            return found

    @staticmethod
    async def _bridge(s: AsyncSession, name: str) -> Device:
        row = await s.scalar(select(Device).where(Device.name == name, Device.kind == "bridge"))
        if row is None:
            raise NotFound(f"no bridge named {name!r}")
        return row

    @staticmethod
    async def _check_printers(s: AsyncSession, names: Sequence[str]) -> None:
        known = set((await s.scalars(select(Printer.name).where(Printer.name.in_(list(names))))).all())
        missing = sorted(set(names) - known)
        if missing:
            raise NotFound(f"no printer named {', '.join(repr(m) for m in missing)}")


def bridge_view(bridge: Device, now: int) -> dict[str, Any]:
    return {
        "name": bridge.name,
        "online": bridge.online,
        "enabled": bridge.enabled,
        "near": list(bridge.near or []),
        "version": bridge.agent_version,
        "online_since": bridge.online_since,
        "last_seen_at": bridge.last_seen_at,
        "latency_ms": None if bridge.latency_ms is None else round(bridge.latency_ms, 1),
        "offline_reason": None if bridge.online else bridge.offline_reason,
        "last_heartbeat_age_s": None
        if bridge.last_heartbeat_at is None
        else round((now - bridge.last_heartbeat_at) / 1000, 1),
    }
