"""The controller: the fleet link's parts put together, and what an operator asks of the fleet.

:class:`Controller` composes the MQTT session (:mod:`cloud.fleet.link`), the inbound handlers
(:mod:`cloud.fleet.inbound`), the outbox (:mod:`cloud.fleet.outbox`) and the periodic work
(:mod:`cloud.fleet.housekeeping`); :meth:`Controller.run` runs them as named tasks of one task
group, so that one of them dying ends :meth:`~Controller.run` with its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cloud.audit import Audit
from cloud.broker_port import BrokerRefusal
from cloud.commands import CommandStore
from cloud.config import ControllerConfig
from cloud.fleet.context import Fleet, device_peer
from cloud.fleet.housekeeping import Housekeeping
from cloud.fleet.inbound import Inbound
from cloud.fleet.link import FleetLink, link_settings
from cloud.fleet.outbox import Outbox
from cloud.jobs.intake import Intake
from cloud.jobs.routing import Router, RoutingConfig
from cloud.jobs.states import QUEUED_ONLY
from cloud.jobs.store import JobStore
from cloud.keys import Keyring
from cloud.presence import Presence
from cloud.registry import Registry
from kernel import wire
from kernel.config import BrokerAddress, TlsSettings
from kernel.session import LinkState, SessionError

S = wire.JobState

__all__ = ["Controller"]


class Controller:
    """Owns the controller's one MQTT session and the loops that act on it."""

    def __init__(
        self,
        *,
        config: ControllerConfig,
        registry: Registry,
        jobs: JobStore,
        presence: Presence,
        keyring: Keyring,
        broker: BrokerAddress,
        secret: str,
        session_number: int,
        on_kick: Callable[[str], Awaitable[object]] | None = None,
        audit: Audit | None = None,
        tls: TlsSettings | None = None,
        commands: CommandStore | None = None,
        intake: Intake | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.jobs = jobs
        self.presence = presence
        self.keyring = keyring
        self.commands = commands
        self.session_number = session_number
        self.peer = wire.Peer(role=wire.Role.CONTROLLER, name=config.controller_name)
        self.link = FleetLink(
            peer=self.peer,
            settings=link_settings(peer=self.peer, addresses=(broker,), secret=secret, tls=tls),
            keyring=keyring,
            session_number=session_number,
            instruction_ttl_s=config.instruction_ttl_s,
        )
        self.router = Router(
            jobs,
            RoutingConfig(
                lease_s=config.lease_s,
                latency_threshold_ms=config.latency_threshold_ms,
                offer_s=config.bridge_offer_s,
                bridge_lease_s=config.bridge_lease_s,
            ),
        )
        self.fleet = Fleet(
            config=config,
            registry=registry,
            jobs=jobs,
            intake=intake or Intake(jobs),
            router=self.router,
            presence=presence,
            link=self.link,
            commands=commands,
            audit=audit,
        )
        self._inbound = Inbound(self.fleet)
        self._outbox = Outbox(self.fleet)
        self._housekeeping = Housekeeping(self.fleet)
        self._on_kick = on_kick

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def online(self) -> asyncio.Event:
        """Set while the controller's session with the broker is up."""
        return self.link.online

    @property
    def state(self) -> LinkState:
        return self.link.state

    @property
    def last_error(self) -> SessionError | None:
        return self.link.last_error

    @property
    def refusals_dropped(self) -> int:
        return self._housekeeping.refusals_dropped

    async def run(self) -> None:
        """Run the link and its loops until cancelled; raises if one of them dies."""
        await self.presence.mark_all_unknown()
        for device in [*await self.registry.list_devices(), *await self.registry.list_devices("bridge")]:
            if device.trusted_kids:
                self.link.trusted[device.name] = tuple(device.trusted_kids)
        hk = self._housekeeping
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                self.link.run(self._inbound.put, self.fleet.security, came_up=self.fleet.wake_outbox),
                name="controller-mqtt",
            )
            tg.create_task(self._outbox.run(), name="controller-outbox")
            tg.create_task(hk.presence_loop(), name="controller-presence")
            tg.create_task(hk.expiry_loop(), name="controller-housekeeping")
            tg.create_task(hk.refusal_loop(), name="controller-broker-refusals")
            tg.create_task(self._inbound.run_lane(self._inbound.fast), name="controller-inbound-fast")
            tg.create_task(self._inbound.run_lane(self._inbound.slow), name="controller-inbound")

    # -- sending ------------------------------------------------------------------------------

    def instruction(self, body: wire.Body, dst: wire.Peer, *, exp: int | None = None) -> wire.Envelope:
        """An instruction: addressed, sequenced, signed, and valid for a bounded time only."""
        return self.link.instruction(body, dst, exp=exp)

    async def send(self, peer: wire.Peer, body: wire.Body) -> bool:
        """Publish a signed instruction to a peer; False if the broker is not reachable now."""
        return await self.link.send(peer, body)

    def wake_outbox(self) -> None:
        self.fleet.wake_outbox()

    async def push_config(self, device: str) -> None:
        await self.fleet.push_config(device)

    async def rotate_keys(self) -> wire.SigningKey:
        new = self.keyring.rotate()
        for peer in await self.presence.online_peers():
            await self.fleet.push_keys(peer)
        return new

    # -- operator actions ---------------------------------------------------------------------

    async def cancel_job(self, job_id: str, source: str) -> dict[str, Any]:
        job = await self.jobs.get(job_id)
        state = S(job.state)
        if state.terminal:
            return {
                "id": job.id,
                "state": job.state,
                "cancelled": False,
                "detail": f"job already {job.state}",
            }
        if state == S.QUEUED and await self.jobs.transition(
            job.id, S.CANCELLED, detail="cancelled before dispatch", source=source, only_from=QUEUED_ONLY
        ):
            return {"id": job.id, "state": S.CANCELLED.value, "cancelled": True}
        await self.jobs.request_cancel(job.id, source)
        self.wake_outbox()
        return {
            "id": job.id,
            "state": job.state,
            "cancelled": False,
            "detail": "cancel requested from the agent",
        }

    async def printers_removed(self, printers: list[str]) -> None:
        """Close the open jobs of removed printers: queued ones are cancelled; a job an agent may
        hold (and may still print, offline) ends ``unknown``, never silently ``cancelled``."""
        for job in await self.jobs.open_jobs_for_printers(printers):
            if not await self.jobs.transition(
                job.id, S.CANCELLED, detail="printer removed", source="controller", only_from=QUEUED_ONLY
            ):
                await self.jobs.transition(
                    job.id,
                    S.UNKNOWN,
                    detail="printer removed while its agent held the job",
                    source="controller",
                )

    async def security(self, actor: str, action: str, target: str | None, detail: str) -> None:
        """Record a refusal that matters for security in the audit log."""
        await self.fleet.security(actor, action, target, detail)

    def note_broker_refusal(self, refusal: BrokerRefusal) -> None:
        """Called by the embedded broker (synchronously) for each refused CONNECT/SUBSCRIBE/PUBLISH."""
        self._housekeeping.note_broker_refusal(refusal)

    async def kick(self, peer: wire.Peer) -> None:
        """Drop a peer's live session (its credentials were just revoked or changed)."""
        if self._on_kick is not None:
            await self._on_kick(peer.client_id)

    async def device_disabled(self, device: str) -> None:
        """Cut a device's live session at once (the broker refuses its credentials from now on)."""
        await self.kick(device_peer(device))

    async def device_removed(self, device: str, printers: list[str]) -> None:
        await self.printers_removed(printers)
        await self.kick(device_peer(device))
