"""The right to print: an agent asks the controller for a job's grant (``job.claim``) before the
first byte goes to the printer, and waits for the answer (``job.grant``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from device_agent.journal import Journal, JournalJob
from kernel import wire

log = logging.getLogger(__name__)

#: How long a claim waits for the controller's answer before asking again (doubling up to a minute).
CLAIM_TIMEOUT_S = 5.0


@dataclass(kw_only=True)
class Claims:
    journal: Journal
    #: Sends a body to the controller; False when it could not (not connected).
    publish: Callable[[wire.Body], Awaitable[bool]]
    #: Set while the session is online.
    online: asyncio.Event
    #: Set once the controller's clock is known (a grant's lease is judged on it).
    clock_known: asyncio.Event
    ctl_now: Callable[[], int]
    local_ms: Callable[[], int]
    _waiting: dict[str, asyncio.Future[wire.JobGrant]] = field(default_factory=dict)

    async def claim(self, job: JournalJob) -> bool:
        """Ask the controller for the right to start writing ``job``; True only when granted.

        Waits while the controller cannot be reached, asking again with backoff (a late grant
        still counts: the same answer is awaited across the repeats): no byte goes to the printer
        without a grant. A grant whose lease ran out on the way is asked for again (the job is
        still this agent's). A refusal releases the job in the journal for good (another executor
        holds it), unless the controller sends it here again.
        """
        while True:
            grant = await self._ask(job)
            if not grant.granted:
                break
            if grant.lease_until is not None and self.ctl_now() < grant.lease_until:
                return True
            log.info("the grant for job %s arrived after its lease; asking again", job.job_id)
        reason = grant.reason or "refused"
        log.warning("job %s not printed here: %s", job.job_id, reason)
        await self.journal.release(job.job_id, self.local_ms(), reason)
        return False

    def on_grant(self, grant: wire.JobGrant) -> None:
        """The controller's answer to a claim (ignored when no claim of that job waits)."""
        waiter = self._waiting.get(grant.job_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(grant)

    async def _ask(self, job: JournalJob) -> wire.JobGrant:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[wire.JobGrant] = loop.create_future()
        self._waiting[job.job_id] = waiter
        wait_s = CLAIM_TIMEOUT_S
        try:
            while not waiter.done():
                await self.online.wait()
                await self.clock_known.wait()  # a grant could not be judged before
                body = wire.JobClaim(job_id=job.job_id, printer=job.printer, attempt=job.attempt)
                if not await self.publish(body):
                    await asyncio.sleep(0.5)  # offline again meanwhile: wait for the session
                    continue
                try:
                    async with asyncio.timeout(wait_s):
                        await asyncio.shield(waiter)
                except TimeoutError:
                    log.info("no answer to the claim of job %s yet; asking again", job.job_id)
                    wait_s = min(wait_s * 2, 60.0)
            return waiter.result()
        finally:
            if self._waiting.get(job.job_id) is waiter:
                del self._waiting[job.job_id]
