"""The device agent: one MQTT session to the cloud, the journal, and a worker per printer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import uuid
from enum import StrEnum
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.config import AgentConfig, AgentError
from device_agent.journal import Journal, JournalJob
from device_agent.maintenance import CommandRejected, Executor, HostCommands, LogBuffer
from device_agent.update import updater_for
from device_agent.worker import PortFactory, PrinterWorker
from kernel import __version__, tls, wire

log = logging.getLogger(__name__)
S = wire.JobState

#: How long a claim waits for the controller's answer before asking again.
CLAIM_TIMEOUT_S = 5.0


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
        self._client: aiomqtt.Client | None = None
        self._session = 0
        self._seq = wire.Sequencer()
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
        self._controller_session: int | None = None
        self._guards: dict[str, wire.ReplayGuard] = {}
        self._refusals: dict[str, wire.Refused] = {}
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
        self._claims: dict[str, asyncio.Future[wire.JobGrant]] = {}
        #: Set once this agent knows the controller's clock (grants and leases are judged on it).
        self._clock_known = asyncio.Event()

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
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._apply_printers(self._printers)
                tg.create_task(self._mqtt_loop(), name="agent-mqtt")
                tg.create_task(self._heartbeat_loop(), name="agent-heartbeat")
                tg.create_task(self._report_loop(), name="agent-reports")
                tg.create_task(self.executor.run(), name="agent-commands")
                tg.create_task(self._restart_watch(), name="agent-restart")
                await self.executor.resume_after_restart()
        except* _RestartNow:
            log.info("restarting the agent as asked")
        finally:
            self.state = AgentState.STOPPED
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
                claim=self.claim,
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

    def _tls_context(self) -> ssl.SSLContext:
        """Trust only the fleet's CA; present this device's certificate under mutual TLS."""
        settings = self.config.tls
        assert settings is not None  # the config refuses mqtts:// without [tls]
        directory = self.config.state_dir / "tls"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = directory / "ca.pem"
        ca.write_text(settings.ca_pem)
        if settings.cert_pem is None or settings.key_pem is None:
            return tls.client_context(ca)
        cert, key = directory / "client.pem", directory / "client.key"
        cert.write_text(settings.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(settings.key_pem)
        return tls.client_context(ca, cert, key)

    # -- MQTT ---------------------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        backoff = 0.2
        index = 0
        while True:
            broker = self.config.brokers[index % len(self.config.brokers)]
            self.state = AgentState.CONNECTING
            self._session = await self.journal.next_session()
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
                    clean_session=False,
                    timeout=10,
                    will=aiomqtt.Will(self.peer.topic(wire.Channel.PRESENCE), will.encode(), qos=1),
                    socket_options=(wire.TCP_NODELAY_OPTION,),
                    tls_context=self._tls_context() if broker.tls else None,
                ) as client:
                    await client.subscribe(self.peer.topic(wire.Channel.DOWN), qos=1)
                    await client.subscribe(wire.CONTROLLER_PRESENCE_TOPIC, qos=1)
                    self._client = client
                    await self._announce()
                    self.state = AgentState.ONLINE
                    self.online.set()
                    backoff = 0.2
                    log.info("agent %s connected to %s (session %d)", self.peer.name, broker, self._session)
                    try:
                        async for message in client.messages:
                            await self._handle(message)
                    except asyncio.CancelledError:
                        # a clean stop: say goodbye so the controller need not wait for the deadline
                        bye = wire.Will(session=self._session, reason="agent stopped")
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self._publish(wire.Channel.PRESENCE, bye), timeout=2)
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("agent lost %s (%s); reconnecting in %.1f s", broker, exc, backoff)
                index += 1
            finally:
                self._client = None
                self.online.clear()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 10.0)

    async def _announce(self) -> None:
        """Birth, a request for pending work, and every report the controller has not acknowledged."""
        birth = wire.Birth(
            session=self._session,
            boot_id=self.boot_id,
            version=self.version,
            started_at=self.local_ms(),
            printers=tuple(p.name for p in self._printers),
            keepalive=self.config.keepalive,
        )
        await self._publish(wire.Channel.PRESENCE, birth)
        await self._publish(wire.Channel.UP, wire.SyncRequest(session=self._session))
        self._report_sent.clear()
        self._wake_reports.set()
        await self.executor.settle_restarts()

    async def _publish(self, channel: wire.Channel, body: wire.Body) -> bool:
        client = self._client
        if client is None:
            return False
        env = wire.Envelope.build(body, src=self.peer, dst=self.config.controller, seq=self._seq.next())
        try:
            await client.publish(self.peer.topic(channel), env.encode(), qos=1)
        except aiomqtt.MqttError as exc:
            log.debug("publish failed: %s", exc)
            return False
        return True

    async def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        topic = str(message.topic)
        try:
            env = wire.decode(payload)
            env.verify(self._keys)
        except wire.WireError as exc:
            log.warning("refused a message on %s: %s", topic, exc)
            await self._refuse(payload, str(exc))
            return
        if topic == wire.CONTROLLER_PRESENCE_TOPIC:
            await self._on_controller_presence(env)
            return
        if env.dst != self.peer.client_id or env.src != self.config.controller.client_id:
            await self._refuse(payload, f"addressed to {env.dst} from {env.src}", env.id)
            return
        if env.type not in wire.DOWNSTREAM_TYPES:
            await self._refuse(payload, f"unexpected {env.type}", env.id)
            return
        if not await self._fresh(env):
            log.warning("refused %s seq %d from %s: replayed or too old", env.type, env.seq, env.src)
            await self._refuse(payload, f"replayed instruction (seq {env.seq})", env.id)
            return
        # The clock is learnt from heartbeat acks, so they cannot be judged on it; every other
        # instruction must still be valid on the controller's clock.
        if env.type is not wire.MsgType.HEARTBEAT_ACK and (env.exp is None or env.expired(self.ctl_now())):
            await self._refuse(
                payload, "expired instruction" if env.exp else "instruction without expiry", env.id
            )
            return
        try:
            await self._dispatch(env)
        except wire.WireError as exc:
            await self._refuse(payload, str(exc), env.id)

    async def _fresh(self, env: wire.Envelope) -> bool:
        """Each sequence number of the controller is acted on once, across restarts (replay guard)."""
        guard = self._guards.get(env.src)
        if guard is None:
            floor = await self.journal.get_kv(f"seq_floor:{env.src}")
            guard = self._guards[env.src] = wire.ReplayGuard(int(floor) if floor else 0)
        before = guard.max_seq
        if not guard.accept(env.seq):
            return False
        if guard.max_seq != before:
            await self.journal.set_kv(f"seq_floor:{env.src}", str(guard.max_seq))
        return True

    async def _refuse(self, _payload: bytes | bytearray, reason: str, message_id: str = "") -> None:
        """Report a refused instruction; kept (in memory, bounded) and resent until acknowledged."""
        refused = wire.Refused(message_id=message_id[:64], reason=reason[:200], report_id=uuid.uuid4().hex)
        assert refused.report_id is not None
        self._refusals[refused.report_id] = refused
        while len(self._refusals) > 200:
            self._refusals.pop(next(iter(self._refusals)))
        if await self._publish(wire.Channel.UP, refused):
            self._report_sent[refused.report_id] = asyncio.get_running_loop().time()

    async def _on_controller_presence(self, env: wire.Envelope) -> None:
        if env.type is wire.MsgType.CONTROLLER_ONLINE:
            session: int = env.parsed(wire.ControllerOnline).session
            if self._controller_session is not None and session != self._controller_session:
                log.info("controller restarted (session %d); announcing again", session)
                await self._announce()
            self._controller_session = session

    async def _dispatch(self, env: wire.Envelope) -> None:
        match env.type:
            case wire.MsgType.JOB_PRINT:
                await self._on_job(env.parsed(wire.JobPrint))
            case wire.MsgType.JOB_CANCEL:
                await self._on_cancel(env.parsed(wire.JobCancel))
            case wire.MsgType.REPORT_ACK:
                ack: wire.ReportAck = env.parsed(wire.ReportAck)
                await self.journal.ack_reports(ack.report_ids)
                for rid in ack.report_ids:
                    self._report_sent.pop(rid, None)
                    self._refusals.pop(rid, None)
            case wire.MsgType.HEARTBEAT_ACK:
                await self._on_heartbeat_ack(env.parsed(wire.HeartbeatAck))
            case wire.MsgType.PRINTERS_CONFIG:
                await self._on_printers_config(env.parsed(wire.PrintersConfig))
            case wire.MsgType.CMD_RUN:
                await self.executor.on_command(env.parsed(wire.CommandRun))
            case wire.MsgType.JOB_GRANT:
                grant: wire.JobGrant = env.parsed(wire.JobGrant)
                waiter = self._claims.get(grant.job_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(grant)
            case wire.MsgType.KEYS_UPDATE:
                update: wire.KeysUpdate = env.parsed(wire.KeysUpdate)
                keys = wire.parse_public_keys(list(update.public_keys))
                await self.journal.set_kv("trusted_keys", json.dumps(list(update.public_keys)))
                self._keys = keys
                log.info("trusting controller keys %s", ", ".join(sorted(keys)))
            case _:
                raise wire.WireError(f"unexpected {env.type}")

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
        await self._publish(wire.Channel.UP, wire.HeartbeatEcho(hb_seq=ack.hb_seq, ctl_ts=ack.ctl_ts))
        sent = self._hb_sent.pop(ack.hb_seq, None)
        if sent is not None:
            rtt = now - sent
            offset = ack.ctl_ts + rtt // 2 - now
            if abs(offset - self.offset_ms) > 50 or not self._clock_known.is_set():
                await self.journal.set_kv("clock_offset_ms", str(offset))
            self.offset_ms = offset
            self._clock_known.set()
        if ack.config_version != self._config_version:
            await self._publish(wire.Channel.UP, wire.SyncRequest(session=self._session, reason="config"))

    # -- the right to print -------------------------------------------------------------------

    async def claim(self, job: JournalJob) -> bool:
        """Ask the controller for the right to start writing ``job``; True only when granted.

        Waits while the controller cannot be reached, asking again with backoff (a late grant
        still counts: the same answer is awaited across the repeats): no byte goes to the printer
        without a grant. A grant whose lease ran out on the way is asked for again (the job is
        still this agent's). A refusal releases the job in the journal for good (another executor
        holds it), unless the controller sends it here again.
        """
        while True:
            grant = await self._ask_grant(job)
            if not grant.granted:
                break
            if grant.lease_until is not None and self.ctl_now() < grant.lease_until:
                return True
            log.info("the grant for job %s arrived after its lease; asking again", job.job_id)
        reason = grant.reason or "refused"
        log.warning("job %s not printed here: %s", job.job_id, reason)
        await self.journal.release(job.job_id, self.local_ms(), reason)
        return False

    async def _ask_grant(self, job: JournalJob) -> wire.JobGrant:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[wire.JobGrant] = loop.create_future()
        self._claims[job.job_id] = waiter
        wait_s = CLAIM_TIMEOUT_S
        try:
            while not waiter.done():
                await self.online.wait()
                await self._clock_known.wait()  # a grant could not be judged before
                body = wire.JobClaim(job_id=job.job_id, printer=job.printer, attempt=job.attempt)
                if not await self._publish(wire.Channel.UP, body):
                    await asyncio.sleep(0.5)
                    continue
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), timeout=wait_s)
                except TimeoutError:
                    log.info("no answer to the claim of job %s yet; asking again", job.job_id)
                    wait_s = min(wait_s * 2, 60.0)
            return waiter.result()
        finally:
            if self._claims.get(job.job_id) is waiter:
                del self._claims[job.job_id]

    # -- loops --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.online.wait()
            self._hb_seq += 1
            self._hb_sent[self._hb_seq] = self.local_ms()
            for old in [k for k in self._hb_sent if k < self._hb_seq - 10]:
                del self._hb_sent[old]
            hb = wire.Heartbeat(
                session=self._session,
                hb_seq=self._hb_seq,
                printers={name: w.health for name, (w, _t) in self._workers.items()},
                config_version=max(self._config_version, 0),
                pending_reports=await self.journal.pending_report_count(),
                keepalive=self.config.keepalive,
                kids=tuple(sorted(self._keys)),
            )
            await self._publish(wire.Channel.UP, hb)
            # the next heartbeat is due after the interval, or at once when a printer's status changes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hb_now.wait(), timeout=float(self._settings["heartbeat_s"]))
            self._hb_now.clear()

    async def _queue_report(self, report: wire.JobReport | wire.CommandReport) -> None:
        """Reports are already durable in the journal; try to send at once, the loop resends."""
        if await self._publish(wire.Channel.UP, report):
            self._report_sent[report.report_id] = asyncio.get_running_loop().time()

    async def _report_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_reports.wait(), timeout=2.0)
            self._wake_reports.clear()
            if self._client is None:
                continue
            now = loop.time()
            pending: list[wire.JobReport | wire.CommandReport | wire.Refused] = [
                *await self.journal.pending_reports()
            ]
            pending.extend(self._refusals.values())
            for report in pending:
                rid = report.report_id or ""
                sent = self._report_sent.get(rid)
                if sent is not None and now - sent < 5.0:
                    continue
                if not await self._publish(wire.Channel.UP, report):
                    break
                self._report_sent[rid] = now

    # -- introspection (status commands, tests) -----------------------------------------------

    @property
    def session(self) -> int:
        return self._session

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
