"""The outbox: what the controller sends on its own, until each peer acknowledges it.

Durability lives in the database and in each executor's journal, never in the broker: a job or a
command is resent with backoff until its agent acknowledges it, and at once whenever the agent
comes back online. Each pass also takes back lapsed bridge offers and offers the jobs of degraded
printers to bridges (:class:`~cloud.jobs.routing.Router`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random

from cloud.fleet.context import Fleet, device_peer
from cloud.models import Command, Job
from kernel import wire

log = logging.getLogger(__name__)

S = wire.JobState


class Outbox:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    async def run(self) -> None:
        fleet = self._fleet
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.wake.wait(), timeout=0.5)
            fleet.wake.clear()
            if not fleet.link.online.is_set():
                continue
            await self.pass_once()

    async def pass_once(self) -> None:
        fleet = self._fleet
        online = await fleet.presence.online_devices()
        now = wire.now_ms()
        await fleet.router.lapsed(now, set(online))
        for offer in await fleet.router.plan(now):
            await fleet.send(
                wire.Peer(role=wire.Role.BRIDGE, name=offer.bridge),
                wire.BridgeOffer(
                    offer_id=offer.offer_id,
                    job_id=offer.job_id,
                    printer=offer.printer,
                    bridge=offer.bridge,
                    grant_until=offer.grant_until,
                    size=offer.size,
                    sha256=offer.sha256,
                    reason=offer.reason,
                ),
            )
        for job in await fleet.jobs.due_for_dispatch(online, now):
            await self._dispatch_job(job, now)
        if fleet.commands is not None:
            for cmd in await fleet.commands.due(online, now):
                await self._dispatch_command(cmd, now)

    def _next_attempt(self, attempt: int, now: int) -> int:
        cfg = self._fleet.config
        delay = min(cfg.resend_initial_s * 2 ** (attempt - 1), cfg.resend_max_s)
        return now + int(delay * 1000 * (0.8 + 0.4 * random.random()))

    async def _dispatch_command(self, cmd: Command, now: int) -> None:
        fleet = self._fleet
        attempt = cmd.attempt + 1
        body = wire.CommandRun(
            command_id=cmd.id,
            action=cmd.action,
            args=cmd.args,
            requested_by=cmd.requested_by,
            expires_at=cmd.expires_at,
            timeout_s=cmd.timeout_s,
        )
        if fleet.commands is None:
            return
        # Recorded before it goes out: a command cancelled while queued is then never sent, and a
        # command that went out can no longer be cancelled as "never sent". A send that fails is
        # retried at next_attempt_at (and at once when the device comes back).
        if await fleet.commands.mark_sent(
            cmd.id, attempt=attempt, next_attempt_at=self._next_attempt(attempt, now)
        ):
            await fleet.send(device_peer(cmd.device_name), body)

    async def _dispatch_job(self, job: Job, now: int) -> None:
        fleet = self._fleet
        peer = device_peer(job.device_name)
        attempt = job.attempt + 1
        lease_until = now + int(fleet.config.lease_s * 1000)
        if job.expires_at is not None:
            lease_until = min(lease_until, job.expires_at)
        sent_at = wire.now_ms()
        if job.cancel_requested_at is not None:
            sent = await fleet.send(peer, wire.JobCancel(job_id=job.id, printer=job.printer_name))
        else:
            if job.payload is None:
                await fleet.jobs.transition(
                    job.id, S.FAILED, detail="payload purged before delivery", source="controller"
                )
                return
            body = wire.JobPrint(
                job_id=job.id,
                printer=job.printer_name,
                data=base64.b64encode(job.payload).decode(),
                sha256=job.payload_sha256,
                copies=job.copies,
                priority=job.priority,
                order=job.seq,
                after=await fleet.jobs.predecessor(job),
                submitted_at=job.created_at,
                expires_at=job.expires_at,
                lease_until=lease_until,
                attempt=attempt,
            )
            sent = await fleet.send(peer, body)
        if sent:
            await fleet.jobs.mark_dispatched(
                job.id,
                attempt=attempt,
                next_attempt_at=self._next_attempt(attempt, now),
                lease_until=lease_until,
                executor=peer.client_id,
                at=sent_at,
            )
