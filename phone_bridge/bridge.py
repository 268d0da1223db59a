"""The phone bridge's cloud side: one MQTT peer session (:mod:`kernel.session`), offers from the
controller, jobs printed over BLE (:mod:`phone_bridge.executor`).

An app embeds it as an async context manager that yields instructions for the app to approve::

    async with open_bridge(config) as bridge:
        async for instruction in bridge.instructions():
            if user_agrees(instruction):          # e.g. "print 1.2 KB on kitchen-1?"
                outcome = await instruction.approve()
            else:
                await instruction.decline("the user said no")

`printfleet bridge run` is that loop with every instruction approved. One instruction is one job
on one printer. Its flow (docs/ble.md, docs/protocol.md):

1. ``bridge.offer`` (signed, addressed to this bridge, short-lived): the printer's BLE side from
   its record, and a grant for this job.
2. The bridge finds the printer, connects, proves its identity per the printer's policy and says
   ``bridge.ready`` (or ``bridge.failed``: nothing was written, the job goes elsewhere).
3. The controller hands over the job (``job.print``); the bridge checks it is the offered one.
4. ``job.claim`` / ``job.grant``: no byte before the grant; after it the job is this bridge's.
5. Paced chunked writes with write-with-response barriers; ``job.report`` printed (or unknown
   when the link broke after bytes went out: never reprinted silently), resent until acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernel import __version__, wire
from kernel.errors import PrintfleetError
from kernel.session import (
    Connected,
    ControllerPresence,
    ControllerStatus,
    Disconnected,
    FileStore,
    PeerSession,
    PeerSettings,
)
from kernel.session import Instruction as Instruction_
from phone_bridge.ble import Backend, RadioLike, open_backend
from phone_bridge.config import BridgeConfig
from phone_bridge.executor import ANSWER_TIMEOUT_S, JobExecutor, Outcome, Progress

log = logging.getLogger(__name__)

#: Unacknowledged reports are resent after this long.
REPORT_RESEND_S = 2.0
#: On stopping, the loops still running after this long are cancelled again (longer than the
#: goodbye message is given).
STOP_RECANCEL_S = 3.0

__all__ = [
    "Bridge",
    "BridgeError",
    "BridgeState",
    "Instruction",
    "Outcome",
    "Progress",
    "open_bridge",
    "run_bridge",
]


class BridgeError(PrintfleetError):
    """The bridge could not do what was asked (the message says why)."""


class BridgeState(StrEnum):
    DISCONNECTED = "disconnected"
    ONLINE = "online"
    STOPPED = "stopped"


@dataclass(kw_only=True)
class Instruction:
    """One job the controller asks this bridge to print; the app approves or declines it."""

    offer: wire.BridgeOffer
    _bridge: Bridge = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def job_id(self) -> str:
        return self.offer.job_id

    @property
    def printer(self) -> wire.BlePrinter:
        return self.offer.printer

    @property
    def size(self) -> int:
        return self.offer.size

    @property
    def reason(self) -> str:
        return self.offer.reason

    async def approve(self, progress: Progress | None = None) -> Outcome:
        """Connect to the printer, take the job, print it; return what happened.

        ``progress(bytes_done, bytes_total)`` is called as the printer accepts the job's bytes
        (all copies counted), e.g. for a progress bar in the app.
        """
        self._once()
        return await self._bridge.execute(self.offer, progress)

    async def decline(self, reason: str = "declined on the bridge") -> None:
        """Refuse the job before anything is written: the controller routes it elsewhere."""
        self._once()
        await self._bridge.send(
            wire.BridgeFailed(offer_id=self.offer.offer_id, job_id=self.offer.job_id, reason=reason[:500])
        )

    def _once(self) -> None:
        if self._settled:
            raise BridgeError(f"instruction for job {self.job_id} was already answered")
        self._settled = True


class Bridge:
    """The bridge's session with the cloud. Build it with :func:`open_bridge`."""

    def __init__(self, config: BridgeConfig, backend: Backend) -> None:
        self.config = config
        self.peer = config.peer
        self._keys: dict[str, Ed25519PublicKey] = dict(config.public_keys)
        self._session: PeerSession | None = None
        self._boot_id = uuid.uuid4().hex
        self.offset_ms = 0
        self._hb_seq = 0
        self._hb_sent: dict[int, int] = {}
        self._instructions: asyncio.Queue[Instruction] = asyncio.Queue()
        self._accepted: dict[str, asyncio.Future[wire.JobAccepted]] = {}
        self._reports: dict[str, wire.JobReport] = {}
        self._wake_reports = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.jobs = JobExecutor(
            bridge_name=self.peer.name,
            backend=backend,
            send=self.send,
            ctl_now=self.ctl_now,
            report=self._keep,
        )
        self.online = asyncio.Event()
        #: Set while the controller is known to be online (its retained birth and will).
        self.controller_online = asyncio.Event()
        self.state = BridgeState.DISCONNECTED

    # -- the app's side -------------------------------------------------------------------------

    async def instructions(self) -> AsyncIterator[Instruction]:
        """Every job offered to this bridge, in arrival order, for the app to approve or decline."""
        while True:
            yield await self._instructions.get()

    @property
    def controller(self) -> ControllerStatus:
        """The controller's presence as this bridge last saw it (unknown before the first)."""
        return ControllerStatus() if self._session is None else self._session.controller

    async def submit(
        self,
        printer: str,
        *,
        text: str | None = None,
        document: dict[str, Any] | None = None,
        raw: bytes | None = None,
        copies: int = 1,
        idempotency_key: str | None = None,
        timeout: float = ANSWER_TIMEOUT_S,
    ) -> str:
        """Submit a job over this bridge's own session (its origin is this bridge); its id."""
        import base64

        given = [x for x in (text, document, raw) if x is not None]
        if len(given) != 1:
            raise BridgeError("give exactly one of text, document, raw")
        kind = "text" if text is not None else "doc" if document is not None else "raw"
        body = wire.JobSubmit(
            request_id=uuid.uuid4().hex,
            printer=printer,
            kind=kind,
            text=text,
            document=document,
            data=None if raw is None else base64.b64encode(raw).decode(),
            copies=copies,
            idempotency_key=idempotency_key,
        )
        waiter: asyncio.Future[wire.JobAccepted] = asyncio.get_running_loop().create_future()
        self._accepted[body.request_id] = waiter
        try:
            if not await self.send(body):
                raise BridgeError("not connected to the broker")
            try:
                answer = await asyncio.wait_for(waiter, timeout)
            except TimeoutError as exc:
                raise BridgeError(f"no answer from the controller within {timeout:.0f} s") from exc
        finally:
            self._accepted.pop(body.request_id, None)
        if answer.job_id is None:
            raise BridgeError(answer.error or "the controller refused the job")
        return answer.job_id

    # -- clock ----------------------------------------------------------------------------------

    def ctl_now(self) -> int:
        return wire.now_ms() + self.offset_ms

    async def execute(self, offer: wire.BridgeOffer, progress: Progress | None = None) -> Outcome:
        return await self.jobs.execute(offer, progress)

    # -- the session ----------------------------------------------------------------------------

    def _session_settings(self) -> PeerSettings:
        c = self.config
        return PeerSettings(
            peer=self.peer,
            controller=c.controller,
            addresses=c.brokers,
            username=c.username,
            password=c.password,
            keepalive=c.keepalive,
            tls=c.tls,
            clean_session=True,
            goodbye="bridge stopped",
        )

    def _birth(self, session: int) -> wire.Birth:
        return wire.Birth(
            session=session,
            boot_id=self._boot_id,
            version=__version__,
            started_at=wire.now_ms(),
            keepalive=self.config.keepalive,
        )

    async def send(self, body: wire.Body) -> bool:
        session = self._session
        return session is not None and await session.publish(body)

    async def _inbound(self, session: PeerSession) -> None:
        async for msg in session.messages():
            match msg:
                case Connected(address=address):
                    log.info("bridge %s connected to %s", self.peer.name, address)
                    self.state = BridgeState.ONLINE
                    self.online.set()
                    self._wake_reports.set()
                case Disconnected():
                    self.online.clear()
                    if self.state is not BridgeState.STOPPED:
                        self.state = BridgeState.DISCONNECTED
                case ControllerPresence(status=status):
                    log.info(
                        "bridge %s: controller %s (session %s)", self.peer.name, status.state, status.session
                    )
                    if msg.online:
                        self.controller_online.set()
                    else:
                        self.controller_online.clear()
                case Instruction_():
                    try:
                        await self._dispatch(msg.body)
                    except wire.WireError as exc:
                        await session.refuse(str(exc), msg.id)

    async def _dispatch(self, body: wire.Body) -> None:
        match body:
            case wire.BridgeOffer():
                if body.bridge != self.peer.name:
                    raise wire.WireError(f"offer for bridge {body.bridge}")
                await self._instructions.put(Instruction(offer=body, _bridge=self))
            case wire.JobPrint():
                self.jobs.on_job(body)
            case wire.JobGrant():
                self.jobs.on_grant(body)
            case wire.JobAccepted():
                waiter = self._accepted.get(body.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(body)
            case wire.ReportAck(report_ids=report_ids):
                for rid in report_ids:
                    self._reports.pop(rid, None)
            case wire.HeartbeatAck(hb_seq=hb_seq, ctl_ts=ctl_ts):
                await self.send(wire.HeartbeatEcho(hb_seq=hb_seq, ctl_ts=ctl_ts))
                sent = self._hb_sent.pop(hb_seq, None)
                if sent is not None:
                    rtt = wire.now_ms() - sent
                    self.offset_ms = ctl_ts + rtt // 2 - wire.now_ms()
            case wire.KeysUpdate(public_keys=public_keys):
                self._keys = dict(wire.parse_public_keys(list(public_keys)))
                if self._session is not None:
                    self._session.trust(self._keys)
            case _:
                log.debug("ignored %s", body.TYPE)

    # -- reports --------------------------------------------------------------------------------

    def _keep(self, report: wire.JobReport) -> None:
        self._reports[report.report_id] = report
        self._wake_reports.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.online.wait()
            self._hb_seq += 1
            self._hb_sent[self._hb_seq] = wire.now_ms()
            for old in [k for k in self._hb_sent if k < self._hb_seq - 10]:
                del self._hb_sent[old]
            await self.send(
                wire.Heartbeat(
                    session=0 if self._session is None else self._session.number,
                    hb_seq=self._hb_seq,
                    keepalive=self.config.keepalive,
                    kids=tuple(sorted(self._keys)),
                    pending_reports=len(self._reports),
                )
            )
            await asyncio.sleep(max(0.5, self.config.keepalive / 2))

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_RESEND_S):
                    await self._wake_reports.wait()
            self._wake_reports.clear()
            if not self.online.is_set():
                continue
            for report in list(self._reports.values()):
                if not await self.send(report):
                    break

    async def _run(self) -> None:
        session = PeerSession(
            self._session_settings(),
            store=FileStore(self.config.state_path / "session.json"),
            keys=self._keys,
            birth=self._birth,
            clock=self.ctl_now,
        )
        async with session, asyncio.TaskGroup() as tg:
            self._session = session
            self._loops = [
                tg.create_task(self._inbound(session), name="bridge-inbound"),
                tg.create_task(self._heartbeat_loop(), name="bridge-heartbeat"),
                tg.create_task(self._report_loop(), name="bridge-reports"),
            ]

    async def _stop(self, task: asyncio.Task[None]) -> None:
        """Cancel :meth:`_run` (``task``) and wait for it to end.

        Its loops are cancelled again for as long as one still runs: on Python 3.11,
        ``asyncio.wait_for`` (which aiomqtt's publish uses) returns normally when the cancellation
        arrives just as the awaited operation completes, and the loop that swallowed it runs on.
        """
        task.cancel()
        while not (await asyncio.wait({task}, timeout=STOP_RECANCEL_S))[0]:
            log.debug("bridge %s: cancelling its loops again", self.peer.name)
            for loop_task in self._loops:
                loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def pending_reports(self) -> int:
        return len(self._reports)


@contextlib.asynccontextmanager
async def open_bridge(
    config: BridgeConfig, *, backend: str | RadioLike | None = None
) -> AsyncIterator[Bridge]:
    """Run a bridge for the duration of the block (the library API; see the module docstring).

    ``backend``: a spec (``bleak`` or ``bumble:SPEC``) or an open radio (e.g. an in-process
    :class:`~phone_bridge.bleak_bumble.BumbleRadio` in tests); default: the config's ``ble_backend``.
    """
    async with open_backend(backend or config.ble_backend) as opened:
        bridge = Bridge(config, opened)
        task = asyncio.create_task(bridge._run(), name=f"bridge-{config.name}")
        try:
            yield bridge
        finally:
            bridge.state = BridgeState.STOPPED
            await bridge._stop(task)


async def run_bridge(
    config: BridgeConfig,
    *,
    backend: str | RadioLike | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> None:
    """`printfleet bridge run`: approve every instruction (or decline all if auto_approve is off)."""
    async with open_bridge(config, backend=backend) as bridge:
        async for instruction in bridge.instructions():
            if not config.auto_approve:
                await instruction.decline("this bridge does not take jobs on its own (auto_approve off)")
                continue
            log.info(
                "job %s for printer %s (%d bytes): %s", instruction.job_id, instruction.printer.name,
                instruction.size, instruction.reason,
            )  # fmt: skip
            outcome = await instruction.approve(progress=_quarter_logger(instruction.job_id))
            log.info("job %s: %s (%s)", outcome.job_id, outcome.state, outcome.detail)
            if on_outcome is not None:
                on_outcome(outcome)


def _quarter_logger(job_id: str) -> Progress:
    """Log a job's progress at each quarter (what `bridge run` shows while it writes)."""
    shown = 0

    def progress(done: int, total: int) -> None:
        nonlocal shown
        quarter = 4 * done // total if total else 4
        if quarter > shown:
            shown = quarter
            log.info("job %s: %d of %d bytes accepted by the printer", job_id, done, total)

    return progress
