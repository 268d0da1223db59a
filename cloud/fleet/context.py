"""What the parts of the fleet link share: the stores, the link, and the actions they all take."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cloud.audit import Audit
from cloud.commands import CommandStore
from cloud.config import ControllerConfig
from cloud.errors import NotFound
from cloud.fleet.link import FleetLink
from cloud.jobs.intake import Intake
from cloud.jobs.routing import Router
from cloud.jobs.store import JobStore
from cloud.presence import Presence
from cloud.registry import Registry
from kernel import wire

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Fleet:
    config: ControllerConfig
    registry: Registry
    jobs: JobStore
    intake: Intake
    router: Router
    presence: Presence
    link: FleetLink
    commands: CommandStore | None = None
    audit: Audit | None = None
    #: Set to make the outbox look at once (a new job, a device back online, an answer).
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_outbox(self) -> None:
        self.wake.set()

    async def send(self, peer: wire.Peer, body: wire.Body) -> bool:
        return await self.link.send(peer, body)

    async def security(self, actor: str, action: str, target: str | None, detail: str) -> None:
        """Record a refusal that matters for security in the audit log."""
        if self.audit is not None:
            await self.audit.record(actor, action, target, outcome="refused", detail=detail)
        else:
            log.warning("%s %s %s refused: %s", actor, action, target, detail)

    async def push_keys(self, peer: wire.Peer) -> None:
        """Tell a peer which signing keys to trust (signed by one it trusts already)."""
        await self.send(peer, wire.KeysUpdate(public_keys=tuple(self.link.keyring.public_keys())))

    async def push_config(self, device: str) -> None:
        try:
            cfg = await self.registry.printers_config(device)
        except NotFound:  # the device was removed meanwhile
            log.debug("no config to push to %s", device, exc_info=True)
            return
        await self.send(device_peer(device), cfg)

    async def resend_all(self, device: str) -> None:
        """A device (re)connected or asked: its config, and its unacknowledged jobs and commands now."""
        await self.push_config(device)
        await self.jobs.resend_now(device)
        if self.commands is not None:
            await self.commands.resend_now(device)
        self.wake_outbox()


def device_peer(name: str) -> wire.Peer:
    return wire.Peer(role=wire.Role.DEVICE, name=name)
