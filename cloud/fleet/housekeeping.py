"""Periodic work: presence deadlines, expiry of work nobody can do any more, payload purges, and
the broker's refusals into the audit log."""

from __future__ import annotations

import asyncio
import logging

from cloud.broker_port import BrokerRefusal
from cloud.fleet.context import Fleet
from cloud.jobs.states import QUEUED_ONLY
from kernel import wire

log = logging.getLogger(__name__)

S = wire.JobState
C = wire.CommandState


class Housekeeping:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._refusals: asyncio.Queue[BrokerRefusal] = asyncio.Queue(maxsize=10_000)
        self.refusals_dropped = 0

    async def presence_loop(self) -> None:
        """Mark offline every peer past its heartbeat deadline."""
        while True:
            await asyncio.sleep(0.25)
            await self._fleet.presence.expire_deadlines()

    async def expiry_loop(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        cfg = self._fleet.config
        while True:
            await asyncio.sleep(1.0)
            now = wire.now_ms()
            await self.expire(now)
            if loop.time() - last_purge > min(60.0, cfg.payload_retention_s / 2):
                last_purge = loop.time()
                purged = await self._fleet.jobs.purge_payloads(now - int(cfg.payload_retention_s * 1000))
                if purged:
                    log.info("purged the payloads of %d finished jobs", purged)

    async def expire(self, now: int) -> None:
        """End the jobs and commands that can no longer be done in time."""
        fleet = self._fleet
        for job in await fleet.jobs.expired_open_jobs(now):
            await fleet.jobs.transition(
                job.id,
                S.EXPIRED,
                detail="expired before delivery",
                source="controller",
                only_from=QUEUED_ONLY,
            )
        if fleet.commands is None:
            return
        undelivered, late = await fleet.commands.overdue(now, grace_ms=5000)
        for cmd in undelivered:
            await fleet.commands.transition(
                cmd.id,
                C.EXPIRED,
                detail="not delivered before it expired",
                source="controller",
                only_from=frozenset({C.QUEUED, C.SENT}),
            )
        for cmd in late:
            await fleet.commands.transition(
                cmd.id, C.TIMED_OUT, detail=f"still running after {cmd.timeout_s} s", source="controller"
            )

    def note_broker_refusal(self, refusal: BrokerRefusal) -> None:
        """Called by the embedded broker (synchronously) for each refused CONNECT/SUBSCRIBE/PUBLISH."""
        try:
            self._refusals.put_nowait(refusal)
        except asyncio.QueueFull:  # a flood must not grow memory: count what could not be recorded
            self.refusals_dropped += 1

    async def refusal_loop(self) -> None:
        while True:
            r = await self._refusals.get()
            await self._fleet.security(r.client, f"broker.{r.action}", r.target, r.reason)
