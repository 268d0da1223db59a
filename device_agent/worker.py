"""One worker per printer: takes the next job from the journal and prints it, copy by copy.

The order of durable steps is what makes printing at-most-once:

0. the controller grants the right to print it (a claim: it may have routed it elsewhere);
1. the job is marked ``printing`` (with ``started_at``) in the journal, fsync'd;
2. only then do its bytes go to the printer;
3. ``printed`` is recorded once the printer confirmed (GS r barrier, then a status check).

A crash between 1 and 3 leaves the job ``unknown`` at the next start; it is never printed again
without an operator's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from device_agent.journal import Journal, JournalJob
from device_agent.printer import PrinterLinkError, PrintOutcome, PrintResult
from kernel import wire

log = logging.getLogger(__name__)
S = wire.JobState


class PrinterPort(Protocol):
    """What a worker needs from a printer connection (see :mod:`device_agent.link`)."""

    async def health(self) -> wire.PrinterHealth: ...

    def status_changes(self) -> AsyncGenerator[wire.PrinterHealth, None]: ...

    async def print_job(
        self,
        data: bytes,
        *,
        on_held: Callable[[str], Awaitable[None]],
        on_resumed: Callable[[], Awaitable[None]],
    ) -> PrintOutcome: ...


PortFactory = Callable[[wire.PrinterSpec], contextlib.AbstractAsyncContextManager[PrinterPort]]
Reporter = Callable[[wire.JobReport], Awaitable[None]]
#: Asks the controller for the right to start writing a job (see :meth:`Agent.claim`).
Claimer = Callable[[JournalJob], Awaitable[bool]]


class PrinterWorker:
    def __init__(
        self,
        spec: wire.PrinterSpec,
        *,
        claim: Claimer,
        journal: Journal,
        port_factory: PortFactory,
        report: Reporter,
        ctl_now: Callable[[], int],
        status_poll_s: float = 5.0,
        on_health: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._journal = journal
        self._claim = claim
        self._factory = port_factory
        self._report = report
        self._ctl_now = ctl_now
        self.poll_s = status_poll_s
        self._wake = asyncio.Event()
        self._health = wire.PrinterHealth(reachable=False, checked_at=0)
        self._on_health = on_health
        self.busy = False
        self._port: PrinterPort | None = None
        self._raw_lock = asyncio.Lock()

    @property
    def health(self) -> wire.PrinterHealth:
        return self._health

    @health.setter
    def health(self, value: wire.PrinterHealth) -> None:
        changed = self._health.checked_at == 0 or value.model_dump(
            exclude={"checked_at"}
        ) != self._health.model_dump(exclude={"checked_at"})  # the first reading always counts as news
        self._health = value
        if changed and self._on_health is not None:
            self._on_health()

    def wake(self) -> None:
        self._wake.set()

    async def _transition(self, job: JournalJob, state: wire.JobState, **kw: object) -> None:
        report = await self._journal.transition(
            job.job_id,
            state,
            now=wire.now_ms(),
            ctl_now=self._ctl_now(),
            printer=job.printer,
            **kw,  # type: ignore[arg-type]
        )
        await self._report(report)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with self._factory(self.spec) as port, asyncio.TaskGroup() as tg:
                    self._port = port
                    backoff = 0.5
                    if self.spec.asb:
                        tg.create_task(self._follow_asb(port), name=f"asb-{self.spec.name}")
                    await self._serve(port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the port failed: report unreachable, retry with backoff
                log.warning("printer %s: %s", self.spec.name, exc)
                self.health = wire.PrinterHealth(reachable=False, checked_at=self._ctl_now())
                await self._hold_waiting_jobs("printer not connected")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                self._wake.clear()
                backoff = min(backoff * 2, 10.0)

    async def raw(self, data: bytes) -> None:
        """Send a maintenance sequence (self-test, drawer kick) between jobs, confirmed like a job."""
        port = self._port
        if port is None:
            raise PrinterLinkError(self.spec.name, "not connected", retryable=True)

        async def nothing(*_args: object) -> None:
            return None

        async with self._raw_lock:
            self.busy = True
            try:
                outcome = await port.print_job(data, on_held=nothing, on_resumed=nothing)
            finally:
                self.busy = False
        if outcome.result is PrintResult.FAILED:
            raise PrinterLinkError(
                self.spec.name, outcome.reason or "the printer did not confirm", retryable=False
            )

    async def _follow_asb(self, port: PrinterPort) -> None:
        """Status the printer reports by itself: shown at once, and a held job resumes at once."""
        async with contextlib.aclosing(port.status_changes()) as changes:
            async for health in changes:
                self.health = health.model_copy(update={"checked_at": self._ctl_now()})
                self._wake.set()

    async def _hold_waiting_jobs(self, reason: str) -> None:
        job = await self._journal.next_waiting(self.spec.name)
        if job is not None and (job.state != S.HELD or job.detail != reason):
            await self._transition(job, S.HELD, detail=reason)

    async def _serve(self, port: PrinterPort) -> None:
        while True:
            job = await self._journal.next_waiting(self.spec.name)
            if job is None:
                await self._refresh(port)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
                self._wake.clear()
                continue
            await self._print(port, job)
            await self._refresh(port)

    async def _refresh(self, port: PrinterPort) -> wire.PrinterHealth:
        if not self.spec.status_queries:
            self.health = wire.PrinterHealth(reachable=True, online=True, checked_at=self._ctl_now())
            return self.health
        self.health = await port.health()
        return self.health

    async def _print(self, port: PrinterPort, job: JournalJob) -> None:
        now = self._ctl_now()
        if job.expires_at is not None and now > job.expires_at:
            await self._transition(job, S.EXPIRED, detail="stale: expired before printing")
            return
        if job.payload is None:
            await self._transition(job, S.FAILED, detail="payload missing from the journal")
            return
        # Do not start a job on a printer that cannot print: hold it, with the reason, until it can.
        health = await self._refresh(port)
        if health.faults:
            reason = ", ".join(health.faults)
            if job.state != S.HELD or job.detail != reason:
                await self._transition(job, S.HELD, detail=reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            return
        # No byte without the controller's grant: it may have routed the job elsewhere meanwhile.
        if not await self._claim(job):
            return
        current = await self._journal.get(job.job_id)
        if current is None or current.state not in (S.DELIVERED, S.HELD) or current.started:
            return  # cancelled (or otherwise settled) while the claim was out
        self.busy = True
        try:
            await self._transition(job, S.PRINTING, started=True, copies_done=job.copies_done)
            copies_done = job.copies_done
            unconfirmed = False

            async def on_held(reason: str) -> None:
                await self._transition(job, S.HELD, detail=reason, copies_done=copies_done)
                await self._refresh(port)  # the fault shows in `devices list` while the job is held

            async def on_resumed() -> None:
                await self._transition(job, S.PRINTING, copies_done=copies_done)
                await self._refresh(port)

            while copies_done < job.copies:
                try:
                    result = await port.print_job(job.payload, on_held=on_held, on_resumed=on_resumed)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # bytes may have reached the printer: the outcome is unknown, never retried silently
                    await self._transition(
                        job,
                        S.UNKNOWN,
                        detail=f"printer link failed during copy {copies_done + 1}: {exc}",
                        copies_done=copies_done,
                    )
                    raise
                if result.result is PrintResult.FAILED:
                    state = S.FAILED if copies_done == 0 and not result.bytes_started else S.UNKNOWN
                    await self._transition(
                        job, state, detail=result.reason or "printer error", copies_done=copies_done
                    )
                    return
                unconfirmed = unconfirmed or result.result is PrintResult.PRINTED_UNCONFIRMED
                copies_done += 1
                if copies_done < job.copies:
                    await self._transition(job, S.PRINTING, copies_done=copies_done)
            detail = "unconfirmed: this printer profile cannot report status" if unconfirmed else None
            await self._transition(job, S.PRINTED, detail=detail, copies_done=copies_done)
        finally:
            self.busy = False
