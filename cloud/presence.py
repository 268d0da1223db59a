"""Presence: who is online, decided from birth/will (fast path) and a heartbeat deadline (authoritative).

Every birth, will and heartbeat carries the agent's session number (incremented at each MQTT
connect and persisted by the agent). A will or heartbeat of an older session never changes the
state of a newer one, so a late will cannot mark a fresh session offline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.models import Device, Printer
from kernel import wire

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PresenceChange:
    device: str
    online: bool
    came_online: bool = False
    config_stale: bool = False


class Presence:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, heartbeat_timeout_s: float) -> None:
        self._sessions = sessions
        self.heartbeat_timeout_ms = int(heartbeat_timeout_s * 1000)

    async def _device(self, s: AsyncSession, name: str) -> Device | None:
        return await s.scalar(select(Device).where(Device.name == name))

    async def on_birth(self, name: str, birth: wire.Birth) -> PresenceChange | None:
        now = wire.now_ms()
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            if device is None or not device.enabled:
                return None
            if birth.session < device.session:
                log.info(
                    "device %s: birth of old session %d ignored (current %d)",
                    name,
                    birth.session,
                    device.session,
                )
                return None
            came_online = not device.online or birth.session != device.session
            device.session = birth.session
            device.boot_id = birth.boot_id
            device.keepalive = birth.keepalive
            device.agent_version = birth.version
            device.online = True
            device.offline_reason = None
            device.last_seen_at = now
            if came_online:
                device.online_since = now
            log.info("device %s online (session %d)", name, birth.session)
            return PresenceChange(device=name, online=True, came_online=came_online)

    async def on_will(self, name: str, will: wire.Will) -> PresenceChange | None:
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            if device is None:
                return None
            if will.session < device.session:
                log.info(
                    "device %s: late will of session %d ignored (current %d)",
                    name,
                    will.session,
                    device.session,
                )
                return None
            if not device.online:
                return None
            device.session = will.session
            device.online = False
            device.offline_reason = will.reason
            log.info("device %s offline (%s, session %d)", name, will.reason, will.session)
            return PresenceChange(device=name, online=False)

    async def on_heartbeat(self, name: str, hb: wire.Heartbeat) -> PresenceChange | None:
        now = wire.now_ms()
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            if device is None or not device.enabled:
                return None
            if hb.session < device.session:
                return None
            came_online = not device.online or hb.session != device.session
            device.session = hb.session
            device.keepalive = hb.keepalive
            if hb.kids:
                device.trusted_kids = list(hb.kids)
            device.last_seen_at = now
            device.last_heartbeat_at = now
            if came_online:
                device.online = True
                device.offline_reason = None
                device.online_since = now
                log.info("device %s online again (heartbeat of session %d)", name, hb.session)
            if hb.printers:
                printers = await s.scalars(
                    select(Printer).where(Printer.device_id == device.id, Printer.name.in_(list(hb.printers)))
                )
                for printer in printers:
                    health = hb.printers[printer.name]
                    printer.health = health.model_dump(mode="json")
                    printer.health_at = now
            return PresenceChange(
                device=name,
                online=True,
                came_online=came_online,
                config_stale=hb.config_version != device.config_version,
            )

    async def on_echo(self, name: str, echo: wire.HeartbeatEcho) -> None:
        rtt = wire.now_ms() - echo.ctl_ts
        if not 0 <= rtt < 120_000:
            return
        async with self._sessions.begin() as s:
            device = await self._device(s, name)
            if device is None:
                return
            device.latency_ms = float(rtt)
            device.last_seen_at = wire.now_ms()

    async def expire_deadlines(self) -> list[PresenceChange]:
        """Mark offline every device silent for longer than 1.5x its keep-alive (MQTT's own rule)."""
        now = wire.now_ms()
        changes: list[PresenceChange] = []
        async with self._sessions.begin() as s:
            rows = await s.scalars(select(Device).where(Device.online.is_(True)))
            for device in rows:
                limit = self.deadline_ms(device.keepalive)
                if device.last_seen_at is not None and now - device.last_seen_at > limit:
                    device.online = False
                    device.offline_reason = "heartbeat deadline missed"
                    changes.append(PresenceChange(device=device.name, online=False))
                    log.info("device %s offline (silent for more than %.1f s)", device.name, limit / 1000)
        return changes

    def deadline_ms(self, keepalive: int | None) -> int:
        if keepalive:
            return int(keepalive * 1500)
        return self.heartbeat_timeout_ms

    async def mark_all_unknown(self) -> None:
        """At controller start nobody is known to be online until they speak again."""
        async with self._sessions.begin() as s:
            rows = await s.scalars(select(Device).where(Device.online.is_(True)))
            now = wire.now_ms()
            for device in rows:
                # keep them online until the deadline proves otherwise: their last_seen is refreshed
                # so a controller restart does not flap every device offline
                device.last_seen_at = now

    async def online_devices(self) -> Sequence[str]:
        """Names of online peers (printer hosts and bridges share one namespace)."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(Device.name).where(Device.online.is_(True), Device.enabled.is_(True))
            )
            return rows.all()

    async def online_peers(self) -> list[wire.Peer]:
        async with self._sessions() as s:
            rows = await s.execute(
                select(Device.name, Device.kind).where(Device.online.is_(True), Device.enabled.is_(True))
            )
            return [
                wire.Peer(role=wire.Role.BRIDGE if kind == "bridge" else wire.Role.DEVICE, name=name)
                for name, kind in rows.all()
            ]
