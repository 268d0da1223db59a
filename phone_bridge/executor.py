"""Executing one job on the bridge: connect to the printer over BLE, prove it is the right one,
take the job from the controller, claim it, write it in paced chunks, report what happened.

The flow (docs/ble.md, docs/protocol.md): ``bridge.ready`` once connected (or ``bridge.failed``:
nothing written, the job goes elsewhere); the controller hands the job over (``job.print``);
``job.claim`` / ``job.grant``: no byte before the grant; ``job.report`` printed, or unknown when the
link broke after bytes went out (never reprinted silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kernel import wire
from phone_bridge.ble import Backend, BleError, PrinterConnection, PrinterTarget, WriteFailed

log = logging.getLogger(__name__)

S = wire.JobState

#: ``progress(bytes_done, bytes_total)`` while a job's bytes go to the printer.
Progress = Callable[[int, int], None]

#: How long the bridge waits for the controller's answers (hand-over, grant, submit).
ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of an approved instruction."""

    job_id: str
    state: str  # printed, unknown, failed, or "not-taken" (nothing written: the job went elsewhere)
    detail: str
    identity: str | None = None
    bytes_written: int = 0


@dataclass(kw_only=True)
class JobExecutor:
    """Runs approved offers one at a time (one radio); the bridge feeds it the controller's answers."""

    bridge_name: str
    backend: Backend
    #: Sends a body to the controller; False when it could not.
    send: Callable[[wire.Body], Awaitable[bool]]
    #: The controller's clock as this bridge estimates it.
    ctl_now: Callable[[], int]
    #: Keeps a job report until the controller acknowledges it (and sends it).
    report: Callable[[wire.JobReport], None]
    _handovers: dict[str, asyncio.Future[wire.JobPrint | wire.JobGrant]] = field(default_factory=dict)
    _grants: dict[str, asyncio.Future[wire.JobGrant]] = field(default_factory=dict)
    _busy: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- the controller's answers ---------------------------------------------------------------

    def on_job(self, job: wire.JobPrint) -> None:
        """The job handed over after ``bridge.ready``; WireError when none was offered here."""
        waiter = self._handovers.get(job.job_id)
        if waiter is None or waiter.done():
            raise wire.WireError(f"job {job.job_id} was not offered to this bridge or is settled")
        waiter.set_result(job)

    def on_grant(self, grant: wire.JobGrant) -> None:
        """A grant (or a refusal after ``bridge.ready``) for a job this bridge waits on."""
        for table in (self._grants, self._handovers):
            fut = table.get(grant.job_id)
            if fut is not None and not fut.done():
                fut.set_result(grant)
                break

    # -- executing one job ----------------------------------------------------------------------

    async def execute(self, offer: wire.BridgeOffer, progress: Progress | None = None) -> Outcome:
        async with self._busy:  # one radio, one job at a time
            return await self._execute(offer, progress)

    async def _execute(self, offer: wire.BridgeOffer, on_progress: Progress | None) -> Outcome:
        job_id = offer.job_id
        remaining = (offer.grant_until - self.ctl_now()) / 1000
        if remaining <= 0:
            return await self._not_taken(offer, "the offer lapsed before it was approved")
        try:
            target = PrinterTarget(
                name=offer.printer.name,
                unique_id=offer.printer.unique_id,
                ble_address=offer.printer.ble_address,
                ble_name=offer.printer.ble_name,
                ble_profile=offer.printer.ble_profile,
                public_key=offer.printer.public_key,
                identity=offer.printer.identity,
            )
        except ValueError as exc:  # a printer record this bridge cannot use
            return await self._not_taken(offer, f"cannot use the printer's BLE record: {exc}")
        loop = asyncio.get_running_loop()
        handover: asyncio.Future[wire.JobPrint | wire.JobGrant] = loop.create_future()
        self._handovers[job_id] = handover
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(remaining):
                        conn = await stack.enter_async_context(PrinterConnection.open(target, self.backend))
                except TimeoutError:
                    return await self._not_taken(
                        offer, "could not connect to the printer before the offer lapsed"
                    )
                except BleError as exc:
                    return await self._not_taken(offer, str(exc))
                identity = str(conn.identity.value)
                await self.send(
                    wire.BridgeReady(
                        offer_id=offer.offer_id,
                        job_id=job_id,
                        identity=identity,
                        address=conn.address,
                        profile=conn.profile_name,
                    )
                )
                try:
                    answer = await asyncio.wait_for(handover, ANSWER_TIMEOUT_S)
                except TimeoutError:
                    return await self._not_taken(offer, "the controller did not hand the job over")
                if isinstance(answer, wire.JobGrant):  # refused after ready (identity policy, lapsed)
                    return Outcome(job_id=job_id, state="not-taken", detail=answer.reason or "refused")
                job = answer
                try:
                    payload = job.payload()
                except wire.WireError as exc:
                    return await self._not_taken(offer, f"bad job payload: {exc}")
                if job.sha256 != offer.sha256:
                    return await self._not_taken(offer, "the job handed over is not the one offered")
                if job.expires_at is not None and self.ctl_now() > job.expires_at:
                    return await self._not_taken(offer, "stale: expired before printing")
                granted = await self._claim(job)
                if granted is None:
                    return await self._not_taken(offer, "no usable grant from the controller")
                if not granted:
                    return Outcome(job_id=job_id, state="not-taken", detail="claim refused")
                return await self._write(offer, job, payload, conn, identity, on_progress)
        finally:
            self._handovers.pop(job_id, None)

    async def _claim(self, job: wire.JobPrint) -> bool | None:
        """True: granted (start now); False: refused by the controller; None: no usable answer."""
        for _ in range(3):
            waiter: asyncio.Future[wire.JobGrant] = asyncio.get_running_loop().create_future()
            self._grants[job.job_id] = waiter
            try:
                await self.send(wire.JobClaim(job_id=job.job_id, printer=job.printer, attempt=job.attempt))
                grant = await asyncio.wait_for(waiter, ANSWER_TIMEOUT_S)
            except TimeoutError:
                continue
            finally:
                self._grants.pop(job.job_id, None)
            if not grant.granted:
                return False
            if grant.lease_until is not None and self.ctl_now() < grant.lease_until:
                return True
        return None

    async def _write(
        self,
        offer: wire.BridgeOffer,
        job: wire.JobPrint,
        payload: bytes,
        conn: PrinterConnection,
        identity: str,
        on_progress: Progress | None = None,
    ) -> Outcome:
        written = 0
        copies_done = 0
        started = False
        total = len(payload) * job.copies

        def progress(sent: int, _total: int) -> None:
            nonlocal started
            if sent > 0 and not started:
                started = True
                self._report(job, S.PRINTING, f"writing over BLE ({identity})", copies_done)
            if on_progress is not None:
                on_progress(copies_done * len(payload) + sent, total)

        try:
            while copies_done < job.copies:
                result = await conn.write(payload, progress=progress)
                written += result.bytes_written
                copies_done += 1
        except (WriteFailed, BleError) as exc:
            sent = getattr(exc, "bytes_sent", 0)
            if not started and copies_done == 0 and sent == 0:
                return await self._not_taken(offer, f"nothing written: {exc}")
            detail = f"BLE link failed during copy {copies_done + 1} after {written + sent} bytes: {exc}"
            self._report(job, S.UNKNOWN, detail, copies_done)
            return Outcome(
                job_id=job.job_id, state="unknown", detail=detail, identity=identity, bytes_written=written
            )
        note = {"verified": "identity verified", "unverified": "identity unverified"}.get(
            identity, "identity not checked"
        )
        detail = f"printed over BLE by bridge {self.bridge_name} ({note})"
        self._report(job, S.PRINTED, detail, copies_done)
        return Outcome(
            job_id=job.job_id, state="printed", detail=detail, identity=identity, bytes_written=written
        )

    async def _not_taken(self, offer: wire.BridgeOffer, reason: str) -> Outcome:
        log.warning("job %s not taken: %s", offer.job_id, reason)
        await self.send(wire.BridgeFailed(offer_id=offer.offer_id, job_id=offer.job_id, reason=reason[:500]))
        return Outcome(job_id=offer.job_id, state="not-taken", detail=reason)

    def _report(self, job: wire.JobPrint, state: wire.JobState, detail: str, copies_done: int) -> None:
        report = wire.JobReport(
            report_id=uuid.uuid4().hex,
            job_id=job.job_id,
            printer=job.printer,
            state=state,
            detail=detail[:500],
            copies_done=copies_done,
            attempt=job.attempt,
            at=self.ctl_now(),
        )
        self.report(report)
