"""The phone bridge's cloud side: one MQTT session, offers from the controller, jobs printed over BLE.

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
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernel import __version__, tls, wire
from kernel.errors import PrintfleetError
from phone_bridge.ble import (
    Backend,
    BleError,
    PrinterConnection,
    PrinterTarget,
    RadioLike,
    WriteFailed,
    open_backend,
)
from phone_bridge.config import BridgeConfig

log = logging.getLogger(__name__)

S = wire.JobState

#: ``progress(bytes_done, bytes_total)`` while a job's bytes go to the printer.
Progress = Callable[[int, int], None]

#: How long the bridge waits for the controller's answers (hand-over, grant, submit).
ANSWER_TIMEOUT_S = 10.0
#: Unacknowledged reports are resent after this long.
REPORT_RESEND_S = 2.0
#: Refusals kept for resending until acknowledged (the oldest are dropped beyond this).
MAX_PENDING_REFUSALS = 200
#: On stopping, the loops still running after this long are cancelled again (longer than the
#: goodbye message is given).
STOP_RECANCEL_S = 3.0


class BridgeError(PrintfleetError):
    """The bridge could not do what was asked (the message says why)."""


class BridgeState(StrEnum):
    DISCONNECTED = "disconnected"
    ONLINE = "online"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of an approved instruction."""

    job_id: str
    state: str  # printed, unknown, failed, or "not-taken" (nothing written: the job went elsewhere)
    detail: str
    identity: str | None = None
    bytes_written: int = 0


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
        self._backend = backend
        self._keys: dict[str, Ed25519PublicKey] = dict(config.public_keys)
        self._client: aiomqtt.Client | None = None
        self._seq = wire.Sequencer()
        self._guard = wire.ReplayGuard(0)
        self._session = max(1, wire.now_ms())
        self._boot_id = uuid.uuid4().hex
        self.offset_ms = 0
        self._hb_seq = 0
        self._hb_sent: dict[int, int] = {}
        self._instructions: asyncio.Queue[Instruction] = asyncio.Queue()
        self._handovers: dict[str, asyncio.Future[wire.JobPrint | wire.JobGrant]] = {}
        self._grants: dict[str, asyncio.Future[wire.JobGrant]] = {}
        self._accepted: dict[str, asyncio.Future[wire.JobAccepted]] = {}
        self._reports: dict[str, wire.JobReport] = {}
        self._refusals: dict[str, wire.Refused] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._busy = asyncio.Lock()
        self.online = asyncio.Event()
        self.state = BridgeState.DISCONNECTED

    # -- the app's side -------------------------------------------------------------------------

    async def instructions(self) -> AsyncIterator[Instruction]:
        """Every job offered to this bridge, in arrival order, for the app to approve or decline."""
        while True:
            yield await self._instructions.get()

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
            kind=kind,  # type: ignore[arg-type]  # one of the three literals, chosen above
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
                        conn = await stack.enter_async_context(PrinterConnection.open(target, self._backend))
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
                        identity=identity,  # type: ignore[arg-type]  # the IdentityOutcome values
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
        detail = f"printed over BLE by bridge {self.peer.name} ({note})"
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
        self._reports[report.report_id] = report
        self._wake_reports.set()

    # -- MQTT -----------------------------------------------------------------------------------

    async def send(self, body: wire.Body) -> bool:
        client = self._client
        if client is None:
            return False
        channel = wire.Channel.PRESENCE if body.TYPE in wire.PRESENCE_TYPES else wire.Channel.UP
        env = wire.Envelope.build(body, src=self.peer, dst=self.config.controller, seq=self._seq.next())
        try:
            await client.publish(self.peer.topic(channel), env.encode(), qos=1)
        except aiomqtt.MqttError as exc:
            log.debug("publish failed: %s", exc)
            return False
        return True

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.config.tls
        if settings is None:
            return None
        return tls.client_context_from_pem(settings.ca_pem, settings.cert_pem, settings.key_pem)

    async def _mqtt_loop(self) -> None:
        backoff = 0.2
        index = 0
        while True:
            broker = self.config.brokers[index % len(self.config.brokers)]
            will = wire.Envelope.build(
                wire.Will(session=self._session), src=self.peer, dst=self.config.controller, seq=0
            )
            try:
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=self.peer.client_id,
                    username=self.config.username,
                    password=self.config.password,
                    keepalive=self.config.keepalive,
                    clean_session=True,
                    timeout=10,
                    will=aiomqtt.Will(self.peer.topic(wire.Channel.PRESENCE), will.encode(), qos=1),
                    socket_options=(wire.TCP_NODELAY_OPTION,),
                    tls_context=self._tls_context() if broker.tls else None,
                ) as client:
                    await client.subscribe(self.peer.topic(wire.Channel.DOWN), qos=1)
                    self._client = client
                    await self.send(
                        wire.Birth(
                            session=self._session,
                            boot_id=self._boot_id,
                            version=__version__,
                            started_at=wire.now_ms(),
                            keepalive=self.config.keepalive,
                        )
                    )
                    await self.send(wire.SyncRequest(session=self._session))
                    self.state = BridgeState.ONLINE
                    self.online.set()
                    self._wake_reports.set()
                    backoff = 0.2
                    log.info("bridge %s connected to %s", self.peer.name, broker)
                    try:
                        async for message in client.messages:
                            await self._handle(message)
                    except asyncio.CancelledError:
                        bye = wire.Will(session=self._session, reason="bridge stopped")
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self.send(bye), timeout=2)
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("bridge lost %s (%s); reconnecting in %.1f s", broker, exc, backoff)
                index += 1
            finally:
                self._client = None
                self.online.clear()
                if self.state is not BridgeState.STOPPED:
                    self.state = BridgeState.DISCONNECTED
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 10.0)

    async def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            env = wire.decode(payload)
            env.verify(self._keys)
        except wire.WireError as exc:
            await self._refuse(str(exc))
            return
        if env.dst != self.peer.client_id or env.src != self.config.controller.client_id:
            await self._refuse(f"addressed to {env.dst} from {env.src}", env.id)
            return
        if env.type not in wire.DOWNSTREAM_TYPES or not self._guard.accept(env.seq):
            await self._refuse(f"unexpected or replayed {env.type} (seq {env.seq})", env.id)
            return
        if env.type is not wire.MsgType.HEARTBEAT_ACK and (env.exp is None or env.expired(self.ctl_now())):
            await self._refuse("expired instruction" if env.exp else "instruction without expiry", env.id)
            return
        try:
            await self._dispatch(env)
        except wire.WireError as exc:
            await self._refuse(str(exc), env.id)

    async def _refuse(self, reason: str, message_id: str = "") -> None:
        """Report a refused instruction; kept (in memory, bounded) and resent until acknowledged."""
        log.warning("refused an instruction: %s", reason)
        refused = wire.Refused(message_id=message_id[:64], reason=reason[:200], report_id=uuid.uuid4().hex)
        assert refused.report_id is not None
        self._refusals[refused.report_id] = refused
        while len(self._refusals) > MAX_PENDING_REFUSALS:
            del self._refusals[next(iter(self._refusals))]
        await self.send(refused)

    async def _dispatch(self, env: wire.Envelope) -> None:
        match env.type:
            case wire.MsgType.BRIDGE_OFFER:
                offer: wire.BridgeOffer = env.parsed(wire.BridgeOffer)
                if offer.bridge != self.peer.name:
                    raise wire.WireError(f"offer for bridge {offer.bridge}")
                await self._instructions.put(Instruction(offer=offer, _bridge=self))
            case wire.MsgType.JOB_PRINT:
                job: wire.JobPrint = env.parsed(wire.JobPrint)
                waiter = self._handovers.get(job.job_id)
                if waiter is None or waiter.done():
                    raise wire.WireError(f"job {job.job_id} was not offered to this bridge or is settled")
                waiter.set_result(job)
            case wire.MsgType.JOB_GRANT:
                grant: wire.JobGrant = env.parsed(wire.JobGrant)
                for table in (self._grants, self._handovers):
                    fut = table.get(grant.job_id)
                    if fut is not None and not fut.done():
                        fut.set_result(grant)
                        break
            case wire.MsgType.JOB_ACCEPTED:
                accepted: wire.JobAccepted = env.parsed(wire.JobAccepted)
                fut_a = self._accepted.get(accepted.request_id)
                if fut_a is not None and not fut_a.done():
                    fut_a.set_result(accepted)
            case wire.MsgType.REPORT_ACK:
                ack: wire.ReportAck = env.parsed(wire.ReportAck)
                for rid in ack.report_ids:
                    self._reports.pop(rid, None)
                    self._refusals.pop(rid, None)
            case wire.MsgType.HEARTBEAT_ACK:
                hb_ack: wire.HeartbeatAck = env.parsed(wire.HeartbeatAck)
                await self.send(wire.HeartbeatEcho(hb_seq=hb_ack.hb_seq, ctl_ts=hb_ack.ctl_ts))
                sent = self._hb_sent.pop(hb_ack.hb_seq, None)
                if sent is not None:
                    rtt = wire.now_ms() - sent
                    self.offset_ms = hb_ack.ctl_ts + rtt // 2 - wire.now_ms()
            case wire.MsgType.KEYS_UPDATE:
                update: wire.KeysUpdate = env.parsed(wire.KeysUpdate)
                self._keys = dict(wire.parse_public_keys(list(update.public_keys)))
            case _:
                log.debug("ignored %s", env.type)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.online.wait()
            self._hb_seq += 1
            self._hb_sent[self._hb_seq] = wire.now_ms()
            for old in [k for k in self._hb_sent if k < self._hb_seq - 10]:
                del self._hb_sent[old]
            await self.send(
                wire.Heartbeat(
                    session=self._session,
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
                await asyncio.wait_for(self._wake_reports.wait(), timeout=REPORT_RESEND_S)
            self._wake_reports.clear()
            if not self.online.is_set():
                continue
            pending: list[wire.JobReport | wire.Refused] = [*self._reports.values(), *self._refusals.values()]
            for report in pending:
                if not await self.send(report):
                    break

    _wake_reports: asyncio.Event

    async def _run(self) -> None:
        self._wake_reports = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            self._loops = [
                tg.create_task(self._mqtt_loop(), name="bridge-mqtt"),
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
