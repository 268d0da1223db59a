"""The device agent: one MQTT peer session to the cloud (:mod:`kernel.session`), the journal, and a
worker per printer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.claims import Claims
from device_agent.config import AgentConfig
from device_agent.errors import AgentError, CommandRejected
from device_agent.journal import Journal
from device_agent.maintenance import Executor, HostCommands, LogBuffer
from device_agent.update import updater_for
from device_agent.worker import PortFactory, PrinterWorker
from kernel import __version__, wire
from kernel.session import (
    Connected,
    ControllerPresence,
    Disconnected,
    Instruction,
    PeerSession,
    PeerSettings,
)

log = logging.getLogger(__name__)
S = wire.JobState


class _RestartNow(Exception):
    """Ends the agent's task group for a restart asked by a maintenance command."""


class AgentState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    ONLINE = "online"
    STOPPED = "stopped"


class Agent:
    def __init__(
        self, config: AgentConfig, *, port_factory: PortFactory | None = None, version: str = __version__
    ) -> None:
        self.config = config
        #: The version this agent announces: the running code's (a harness may name the one it simulates).
        self.version = version
        self.peer = config.peer
        self.state = AgentState.NEW
        self.journal = Journal(config.journal_path)
        if port_factory is None:
            from device_agent.link import open_port

            port_factory = open_port
        self._port_factory = port_factory
        self._session: PeerSession | None = None
        self._hb_seq = 0
        self._hb_sent: dict[int, int] = {}
        self.offset_ms = 0
        self.boot_id = uuid.uuid4().hex
        self._workers: dict[str, tuple[PrinterWorker, asyncio.Task[None]]] = {}
        self._config_version = -1
        self._printers: tuple[wire.PrinterSpec, ...] = config.printers
        self._wake_reports = asyncio.Event()
        self._hb_now = asyncio.Event()
        self._report_sent: dict[str, float] = {}
        #: The controller signing keys trusted now: the config's, until a keys.update replaces them.
        self._keys: dict[str, Ed25519PublicKey] = dict(config.public_keys)
        self.logs = LogBuffer()
        self.executor = Executor(
            journal=self.journal,
            agent=self,
            logs=self.logs,
            host=HostCommands(reboot=config.reboot_command, shutdown=config.shutdown_command),
            updates=updater_for(config.state_dir, config.controller_http),
        )
        self.restart_requested = False
        self._restart = asyncio.Event()
        self._settings: dict[str, Any] = {
            "heartbeat_s": self.config.heartbeat_interval,
            "status_poll_s": self.config.status_poll_s,
            "log_level": "INFO",
        }
        self.online = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        #: Set once this agent knows the controller's clock (grants and leases are judged on it).
        self._clock_known = asyncio.Event()
        self._claims = Claims(
            journal=self.journal,
            publish=self._publish,
            online=self.online,
            clock_known=self._clock_known,
            ctl_now=self.ctl_now,
            local_ms=self.local_ms,
        )

    # -- clock --------------------------------------------------------------------------------

    def local_ms(self) -> int:
        """This host's wall clock (which may be wrong: expiry is never judged on it alone)."""
        return wire.now_ms() + self.config.clock_skew_ms

    def ctl_now(self) -> int:
        """The controller's clock as this agent estimates it (expiry and leases are judged on it)."""
        return self.local_ms() + self.offset_ms

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.logs.attach()  # the agent's own loggers; the entry point configures logging
        await self.journal.open()
        try:
            offset = await self.journal.get_kv("clock_offset_ms")
            self.offset_ms = int(offset) if offset else 0
            if offset:
                self._clock_known.set()
            trusted = await self.journal.get_kv("trusted_keys")
            if trusted:
                self._keys = wire.parse_public_keys(json.loads(trusted))
            await self._check_journal_belongs_here()
            saved = await self.journal.get_kv("settings")
            if saved:
                for key, value in json.loads(saved).items():
                    with contextlib.suppress(ValueError, KeyError):
                        await self.apply_setting(key, value, persist=False)
            stored = await self.journal.get_kv("printers_config")
            if stored:
                cfg = wire.PrintersConfig.model_validate_json(stored)
                self._printers, self._config_version = cfg.printers, cfg.version
            for report in await self.journal.recover_after_restart(
                now=self.local_ms(), ctl_now=self.ctl_now()
            ):
                log.warning("job %s ended unknown: the agent stopped while printing it", report.job_id)
            self.state = AgentState.CONNECTING
            async with (
                PeerSession(
                    self._session_settings(),
                    store=self.journal,
                    keys=self._keys,
                    birth=self._birth,
                    clock=self.ctl_now,
                ) as session,
                asyncio.TaskGroup() as tg,
            ):
                self._session, self._tg = session, tg
                self._apply_printers(self._printers)
                tg.create_task(self._inbound(session), name="agent-inbound")
                tg.create_task(self._heartbeat_loop(), name="agent-heartbeat")
                tg.create_task(self._report_loop(), name="agent-reports")
                tg.create_task(self.executor.run(), name="agent-commands")
                tg.create_task(self._restart_watch(), name="agent-restart")
                await self.executor.resume_after_restart()
        except* _RestartNow:
            log.info("restarting the agent as asked")
        finally:
            self.state = AgentState.STOPPED
            self.online.clear()
            self.logs.detach()
            for _worker, task in self._workers.values():
                task.cancel()
            await self.journal.close()

    async def _check_journal_belongs_here(self) -> None:
        """A journal written under another controller (another fleet) must not drive this printer:
        its pending jobs came from someone this configuration does not trust."""
        fleet = await self.journal.get_kv("fleet_key")
        known = set(self.config.public_keys) | set(self._keys)
        if fleet is None:
            await self.journal.set_kv("fleet_key", sorted(self.config.public_keys)[0])
        elif fleet not in known:
            raise AgentError(
                f"the journal in {self.config.state_dir} belongs to another controller (key {fleet});"
                " move it away or set [agent] state_dir to a new directory"
            )

    # -- printers -----------------------------------------------------------------------------

    def _apply_printers(self, printers: tuple[wire.PrinterSpec, ...]) -> None:
        assert self._tg is not None
        wanted = {p.name: p for p in printers}
        for name, (worker, task) in list(self._workers.items()):
            if name not in wanted or wanted[name] != worker.spec:
                task.cancel()
                del self._workers[name]
        for name, spec in wanted.items():
            if name in self._workers:
                continue
            worker = PrinterWorker(
                spec,
                claim=self._claims.claim,
                journal=self.journal,
                port_factory=self._port_factory,
                report=self._queue_report,
                ctl_now=self.ctl_now,
                status_poll_s=float(self._settings["status_poll_s"]),
                on_health=self._hb_now.set,
            )
            task = self._tg.create_task(worker.run(), name=f"printer-{name}")
            self._workers[name] = (worker, task)

    async def _on_printers_config(self, cfg: wire.PrintersConfig) -> None:
        if cfg.version < self._config_version:
            return
        self._config_version = cfg.version
        self._printers = cfg.printers
        await self.journal.set_kv("printers_config", cfg.model_dump_json())
        self._apply_printers(cfg.printers)
        known = {p.name for p in cfg.printers}
        for printer in await self.journal.waiting_printers():
            if printer not in known:
                while (job := await self.journal.next_waiting(printer)) is not None:
                    await self._queue_report(
                        await self.journal.transition(
                            job.job_id,
                            S.FAILED,
                            now=self.local_ms(),
                            ctl_now=self.ctl_now(),
                            printer=printer,
                            detail=f"printer {printer!r} is not attached to this host",
                        )
                    )

    # -- the session ------------------------------------------------------------------------

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
            clean_session=False,  # the broker keeps QoS 1 instructions for this host while it is away
            goodbye="agent stopped",
        )

    def _birth(self, session: int) -> wire.Birth:
        return wire.Birth(
            session=session,
            boot_id=self.boot_id,
            version=self.version,
            started_at=self.local_ms(),
            printers=tuple(p.name for p in self._printers),
            keepalive=self.config.keepalive,
        )

    async def _inbound(self, session: PeerSession) -> None:
        async for msg in session.messages():
            match msg:
                case Connected(address=address):
                    self.state = AgentState.ONLINE
                    log.info("agent %s connected to %s (session %d)", self.peer.name, address, msg.session)
                    await self._announced()
                    self.online.set()
                case Disconnected():
                    self.online.clear()
                    self.state = AgentState.CONNECTING
                case ControllerPresence(restarted=True):
                    await self._announced()  # the session sent birth and sync again
                case ControllerPresence():
                    pass
                case Instruction():
                    try:
                        await self._dispatch(msg.body)
                    except wire.WireError as exc:
                        await session.refuse(str(exc), msg.id)

    async def _announced(self) -> None:
        """After a birth and sync request: every report the controller has not acknowledged goes
        out again, and a restart asked for is confirmed."""
        self._report_sent.clear()
        self._wake_reports.set()
        await self.executor.settle_restarts()

    async def _publish(self, body: wire.Body) -> bool:
        session = self._session
        return session is not None and await session.publish(body)

    async def _dispatch(self, body: wire.Body) -> None:
        match body:
            case wire.JobPrint():
                await self._on_job(body)
            case wire.JobCancel():
                await self._on_cancel(body)
            case wire.ReportAck(report_ids=report_ids):
                await self.journal.ack_reports(report_ids)
                for rid in report_ids:
                    self._report_sent.pop(rid, None)
            case wire.HeartbeatAck():
                await self._on_heartbeat_ack(body)
            case wire.PrintersConfig():
                await self._on_printers_config(body)
            case wire.CommandRun():
                await self.executor.on_command(body)
            case wire.JobGrant():
                self._claims.on_grant(body)
            case wire.KeysUpdate(public_keys=public_keys):
                keys = wire.parse_public_keys(list(public_keys))
                await self.journal.set_kv("trusted_keys", json.dumps(list(public_keys)))
                self._keys = keys
                if self._session is not None:
                    self._session.trust(keys)
                log.info("trusting controller keys %s", ", ".join(sorted(keys)))
            case _:
                raise wire.WireError(f"unexpected {body.TYPE}")

    async def _on_job(self, job: wire.JobPrint) -> None:
        payload = job.payload()  # checks base64 and sha256
        now = self.local_ms()
        record, is_new = await self.journal.accept(job, payload, now)
        if not is_new:
            # a redelivery: answer with what the journal recorded, never print twice
            report = await self.journal.report_current(job.job_id, now=now, ctl_now=self.ctl_now())
            if report is not None:
                await self._queue_report(report)
            worker = self._workers.get(record.printer)
            if worker is not None:  # it may have been routed back here after a release
                worker[0].wake()
            return
        if job.expires_at is not None and self.ctl_now() > job.expires_at:
            await self._queue_report(
                await self.journal.transition(
                    job.job_id, S.EXPIRED, now=now, ctl_now=self.ctl_now(), detail="stale: expired on arrival"
                )
            )
            return
        await self._queue_report(
            await self.journal.transition(job.job_id, S.DELIVERED, now=now, ctl_now=self.ctl_now())
        )
        worker = self._workers.get(record.printer)
        if worker is not None:
            worker[0].wake()

    async def _on_cancel(self, cancel: wire.JobCancel) -> None:
        now = self.local_ms()
        job = await self.journal.get(cancel.job_id)
        if job is None:
            await self.journal.tombstone(
                cancel.job_id, cancel.printer, S.CANCELLED, "cancelled before arrival", now
            )
            report = await self.journal.report_current(cancel.job_id, now=now, ctl_now=self.ctl_now())
        elif not job.state.terminal and not job.started:
            report = await self.journal.transition(
                cancel.job_id,
                S.CANCELLED,
                now=now,
                ctl_now=self.ctl_now(),
                detail="cancelled by the operator",
            )
        else:
            report = await self.journal.report_current(cancel.job_id, now=now, ctl_now=self.ctl_now())
        if report is not None:
            await self._queue_report(report)

    async def _on_heartbeat_ack(self, ack: wire.HeartbeatAck) -> None:
        now = self.local_ms()
        # echo first: the controller measures the round trip, so nothing may delay this reply
        await self._publish(wire.HeartbeatEcho(hb_seq=ack.hb_seq, ctl_ts=ack.ctl_ts))
        sent = self._hb_sent.pop(ack.hb_seq, None)
        if sent is not None:
            rtt = now - sent
            offset = ack.ctl_ts + rtt // 2 - now
            if abs(offset - self.offset_ms) > 50 or not self._clock_known.is_set():
                await self.journal.set_kv("clock_offset_ms", str(offset))
            self.offset_ms = offset
            self._clock_known.set()
        if ack.config_version != self._config_version:
            await self._publish(wire.SyncRequest(session=self.session, reason="config"))

    # -- loops --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.online.wait()
            self._hb_seq += 1
            self._hb_sent[self._hb_seq] = self.local_ms()
            for old in [k for k in self._hb_sent if k < self._hb_seq - 10]:
                del self._hb_sent[old]
            hb = wire.Heartbeat(
                session=self.session,
                hb_seq=self._hb_seq,
                printers={name: w.health for name, (w, _t) in self._workers.items()},
                config_version=max(self._config_version, 0),
                pending_reports=await self.journal.pending_report_count(),
                keepalive=self.config.keepalive,
                kids=tuple(sorted(self._keys)),
            )
            await self._publish(hb)
            # the next heartbeat is due after the interval, or at once when a printer's status changes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hb_now.wait(), timeout=float(self._settings["heartbeat_s"]))
            self._hb_now.clear()

    async def _queue_report(self, report: wire.JobReport | wire.CommandReport) -> None:
        """Reports are already durable in the journal; try to send at once, the loop resends."""
        if await self._publish(report):
            self._report_sent[report.report_id] = asyncio.get_running_loop().time()

    async def _report_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_reports.wait(), timeout=2.0)
            self._wake_reports.clear()
            if not self.online.is_set():
                continue
            now = loop.time()
            for report in await self.journal.pending_reports():
                rid = report.report_id or ""
                sent = self._report_sent.get(rid)
                if sent is not None and now - sent < 5.0:
                    continue
                if not await self._publish(report):
                    break
                self._report_sent[rid] = now

    # -- introspection (status commands, tests) -----------------------------------------------

    @property
    def session(self) -> int:
        """The MQTT session number of the current (or last) connection; 0 before the first."""
        return 0 if self._session is None else self._session.number

    # -- hooks for maintenance commands (device_agent.maintenance.AgentHooks) -----------------

    def printing(self) -> bool:
        return any(w.busy for w, _t in self._workers.values())

    async def raw_to_printer(self, printer: str | None, data: bytes) -> str:
        if printer is None:
            if len(self._workers) != 1:
                raise CommandRejected(f"this host has {len(self._workers)} printers: name one with --printer")
            printer = next(iter(self._workers))
        if printer not in self._workers:
            raise CommandRejected(f"no printer {printer!r} on this host")
        await self._workers[printer][0].raw(data)
        return printer

    async def queue_report(self, report: wire.CommandReport) -> None:
        await self._queue_report(report)

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    async def apply_setting(self, key: str, value: Any, *, persist: bool = True) -> None:
        """Apply a setting live; ValueError (nothing changed) when the value is not valid."""
        match key:
            case "heartbeat_s" | "status_poll_s":
                number = float(value)
                if not 0.2 <= number <= 600:
                    raise ValueError(f"{key} must be between 0.2 and 600 seconds")
                self._settings[key] = number
                if key == "status_poll_s":
                    for worker, _task in self._workers.values():
                        worker.poll_s = number
                self._hb_now.set()
            case "log_level":
                level = str(value).upper()
                if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                    raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
                self._settings[key] = level
                for name in ("device_agent", "printfleet"):
                    logging.getLogger(name).setLevel(level)
            case _:
                raise KeyError(key)
        if persist:
            await self.journal.set_kv("settings", json.dumps(self._settings))

    def request_restart(self) -> None:
        self.restart_requested = True
        self._restart.set()

    async def _restart_watch(self) -> None:
        await self._restart.wait()
        await asyncio.sleep(0.2)  # let the in_progress report go out first
        raise _RestartNow

    def printer_health(self) -> dict[str, wire.PrinterHealth]:
        return {name: w.health for name, (w, _t) in self._workers.items()}
