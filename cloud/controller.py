"""The controller's MQTT side: presence, the job outbox, and every report from the fleet.

Durability lives here and in each agent's journal, never in the broker: a job is resent with
backoff until its agent acknowledges it, and again at once whenever the agent comes back online.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import aiomqtt

from broker import Refusal
from cloud.audit import Audit
from cloud.commands import CommandStore
from cloud.config import ControllerConfig
from cloud.jobs import QUEUED_ONLY, JobStore, Submission
from cloud.keys import Keyring
from cloud.models import Command, Job
from cloud.presence import Presence, PresenceChange
from cloud.registry import Registry
from cloud.routing import RETRY_LATER, Router, RoutingConfig
from kernel import wire

log = logging.getLogger(__name__)

S = wire.JobState


#: Messages acted on ahead of job and command reports: presence, heartbeats (whose round trip
#: decides whether a path is degraded: it must not include the controller's report backlog) and
#: the claims an executor waits on before printing.
FAST_LANE = frozenset(
    {
        wire.MsgType.BIRTH,
        wire.MsgType.WILL,
        wire.MsgType.HEARTBEAT,
        wire.MsgType.HEARTBEAT_ECHO,
        wire.MsgType.JOB_CLAIM,
        wire.MsgType.BRIDGE_READY,
        wire.MsgType.BRIDGE_FAILED,
    }
)


class LinkState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    STOPPED = "stopped"


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
        broker_host: str,
        broker_port: int,
        secret: str,
        session_number: int,
        on_kick: Callable[[str], Awaitable[object]] | None = None,
        audit: Audit | None = None,
        tls_context: ssl.SSLContext | None = None,
        commands: CommandStore | None = None,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.jobs = jobs
        self.presence = presence
        self.keyring = keyring
        #: The signing key ids each device reported trusting (from its heartbeats).
        self._trusted: dict[str, tuple[str, ...]] = {}
        self.peer = wire.Peer(role=wire.Role.CONTROLLER, name=config.controller_name)
        self._host = broker_host
        self._port = broker_port
        self._secret = secret
        self.session_number = session_number
        self._seq = wire.Sequencer()
        self._client: aiomqtt.Client | None = None
        self._wake_outbox = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = LinkState.DISCONNECTED
        self._on_kick = on_kick
        self._audit = audit
        self._tls_context = tls_context
        self.commands = commands
        self.router = router or Router(
            jobs.sessions,
            jobs,
            RoutingConfig(
                lease_s=config.lease_s,
                latency_threshold_ms=config.latency_threshold_ms,
                offer_s=config.bridge_offer_s,
                bridge_lease_s=config.bridge_lease_s,
            ),
        )
        self._refusals: asyncio.Queue[Refusal] = asyncio.Queue(maxsize=10_000)
        # Inbound messages, in two lanes so that a flood of job reports never delays presence,
        # round-trip measurement or a claim (a full lane pushes back on the broker connection).
        self._fast: asyncio.Queue[tuple[wire.Peer, wire.Envelope]] = asyncio.Queue(maxsize=10_000)
        self._slow: asyncio.Queue[tuple[wire.Peer, wire.Envelope]] = asyncio.Queue(maxsize=10_000)
        self.refusals_dropped = 0
        self.last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.presence.mark_all_unknown()
        for device in [*await self.registry.list_devices(), *await self.registry.list_devices("bridge")]:
            if device.trusted_kids:
                self._trusted[device.name] = tuple(device.trusted_kids)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mqtt_loop(), name="controller-mqtt")
                tg.create_task(self._outbox_loop(), name="controller-outbox")
                tg.create_task(self._presence_loop(), name="controller-presence")
                tg.create_task(self._housekeeping_loop(), name="controller-housekeeping")
                tg.create_task(self._refusal_loop(), name="controller-broker-refusals")
                tg.create_task(self._lane(self._fast), name="controller-inbound-fast")
                tg.create_task(self._lane(self._slow), name="controller-inbound")
        finally:
            self.state = LinkState.STOPPED

    async def _mqtt_loop(self) -> None:
        backoff = 0.2
        offline = wire.Envelope.build(
            wire.ControllerOffline(session=self.session_number), src=self.peer, dst="*", seq=0
        ).signed(self.keyring.keys[-1])
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=self.peer.client_id,
                    username=self.peer.client_id,
                    password=self._secret,
                    keepalive=10,
                    clean_session=True,
                    timeout=10,
                    will=aiomqtt.Will(wire.CONTROLLER_PRESENCE_TOPIC, offline.encode(), qos=1, retain=True),
                    socket_options=(wire.TCP_NODELAY_OPTION,),
                    tls_context=self._tls_context,
                ) as client:
                    for topic in wire.CONTROLLER_SUBSCRIPTIONS:
                        await client.subscribe(topic, qos=1)
                    # signed with the oldest key still in use: the one every peer trusts
                    online = wire.Envelope.build(
                        wire.ControllerOnline(session=self.session_number, started_at=wire.now_ms()),
                        src=self.peer,
                        dst="*",
                        seq=self._seq.next(),
                    ).signed(self.keyring.keys[-1])
                    await client.publish(wire.CONTROLLER_PRESENCE_TOPIC, online.encode(), qos=1, retain=True)
                    self._client = client
                    self.state = LinkState.CONNECTED
                    self.connected.set()
                    self._wake_outbox.set()
                    backoff = 0.2
                    log.info("controller connected to broker %s:%d", self._host, self._port)
                    async for message in client.messages:
                        accepted = await self._accept(message)
                        if accepted is not None:
                            lane = self._fast if accepted[1].type in FAST_LANE else self._slow
                            await lane.put(accepted)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("controller lost the broker (%s); reconnecting in %.1f s", exc, backoff)
            finally:
                self._client = None
                self.connected.clear()
                if self.state is not LinkState.STOPPED:
                    self.state = LinkState.DISCONNECTED
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    # -- sending ------------------------------------------------------------------------------

    def _envelope(self, body: wire.Body, dst: wire.Peer | str, exp: int | None = None) -> wire.Envelope:
        key = self.keyring.active
        if isinstance(dst, wire.Peer):
            key = self.keyring.for_peer(self._trusted.get(dst.name))
        return wire.Envelope.build(body, src=self.peer, dst=dst, seq=self._seq.next(), exp=exp).signed(key)

    async def push_keys(self, peer: wire.Peer) -> None:
        """Tell a peer which signing keys to trust (signed by one it trusts already)."""
        await self.send(peer, wire.KeysUpdate(public_keys=tuple(self.keyring.public_keys())))

    async def rotate_keys(self) -> wire.SigningKey:
        new = self.keyring.rotate()
        for peer in await self.presence.online_peers():
            await self.push_keys(peer)
        return new

    def instruction(self, body: wire.Body, dst: wire.Peer, *, exp: int | None = None) -> wire.Envelope:
        """An instruction: addressed, sequenced, signed, and valid for a bounded time only."""
        if exp is None:
            exp = wire.now_ms() + int(self.config.instruction_ttl_s * 1000)
        return self._envelope(body, dst, exp)

    async def send(self, peer: wire.Peer, body: wire.Body) -> bool:
        """Publish a signed instruction to a peer; False if the broker is not reachable now."""
        client = self._client
        if client is None:
            return False
        env = self.instruction(body, peer)
        try:
            await client.publish(peer.topic(wire.Channel.DOWN), env.encode(), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("publish to %s failed: %s", peer, exc)
            return False
        return True

    def wake_outbox(self) -> None:
        self._wake_outbox.set()

    async def push_config(self, device: str) -> None:
        try:
            cfg = await self.registry.printers_config(device)
        except Exception:  # the device may have been removed meanwhile
            log.debug("no config to push to %s", device, exc_info=True)
            return
        await self.send(_device_peer(device), cfg)

    # -- inbound ------------------------------------------------------------------------------

    async def _accept(self, message: aiomqtt.Message) -> tuple[wire.Peer, wire.Envelope] | None:
        """Check where a message came from and that it may say what it says; None if not."""
        topic = str(message.topic)
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return None
        try:
            peer, channel = wire.parse_topic(topic)
            env = wire.decode(payload)
        except wire.WireError as exc:
            await self.security(f"topic:{topic}", "message.invalid", topic, str(exc))
            return None
        if env.src != peer.client_id:
            await self.security(
                peer.client_id, "message.spoofed", env.src, f"on {topic} claiming src {env.src}"
            )
            return None
        upstream = wire.BRIDGE_UPSTREAM_TYPES if peer.role is wire.Role.BRIDGE else wire.UPSTREAM_TYPES
        allowed = wire.PRESENCE_TYPES if channel is wire.Channel.PRESENCE else upstream
        if env.type not in allowed or channel is wire.Channel.DOWN:
            log.warning("dropped a %s message on %s", env.type, topic)
            return None
        if peer.role not in (wire.Role.DEVICE, wire.Role.BRIDGE):
            return None
        return peer, env

    async def _lane(self, queue: asyncio.Queue[tuple[wire.Peer, wire.Envelope]]) -> None:
        """Act on accepted messages in arrival order (one lane; see :data:`FAST_LANE`)."""
        while True:
            peer, env = await queue.get()
            try:
                await self._dispatch(peer, env)
            except wire.WireError as exc:
                log.warning("dropped %s from %s: %s", env.type, peer, exc)

    async def _dispatch(self, peer: wire.Peer, env: wire.Envelope) -> None:
        name = peer.name
        match env.type:
            case wire.MsgType.BIRTH:
                change = await self.presence.on_birth(name, env.parsed(wire.Birth))
                if change is not None:
                    await self._came_online(change, peer)
            case wire.MsgType.WILL:
                await self.presence.on_will(name, env.parsed(wire.Will))
            case wire.MsgType.HEARTBEAT:
                hb: wire.Heartbeat = env.parsed(wire.Heartbeat)
                change = await self.presence.on_heartbeat(name, hb)
                if change is None:
                    return
                if hb.kids:
                    self._trusted[name] = hb.kids
                    if set(hb.kids) != {k.kid for k in self.keyring.keys}:
                        await self.push_keys(peer)
                device = await self.registry.get_device(name)
                await self.send(
                    peer,
                    wire.HeartbeatAck(
                        hb_seq=hb.hb_seq, ctl_ts=wire.now_ms(), config_version=device.config_version
                    ),
                )
                if change.came_online:
                    await self._came_online(change, peer)
                elif change.config_stale and peer.role is wire.Role.DEVICE:
                    await self.push_config(name)
            case wire.MsgType.HEARTBEAT_ECHO:
                await self.presence.on_echo(name, env.parsed(wire.HeartbeatEcho))
            case wire.MsgType.JOB_REPORT:
                await self._on_report(peer, env.parsed(wire.JobReport))
            case wire.MsgType.CMD_REPORT:
                await self._on_command_report(peer, env.parsed(wire.CommandReport))
            case wire.MsgType.JOB_CLAIM:
                await self._on_claim(peer, env.parsed(wire.JobClaim))
            case wire.MsgType.BRIDGE_READY:
                await self._on_bridge_ready(peer, env.parsed(wire.BridgeReady))
            case wire.MsgType.BRIDGE_FAILED:
                failed: wire.BridgeFailed = env.parsed(wire.BridgeFailed)
                if await self.router.bridge_failed(name, failed, wire.now_ms()):
                    self.wake_outbox()
            case wire.MsgType.JOB_SUBMIT:
                await self._on_bridge_submit(peer, env.parsed(wire.JobSubmit))
            case wire.MsgType.SYNC_REQUEST if peer.role is wire.Role.BRIDGE:
                self.wake_outbox()
            case wire.MsgType.SYNC_REQUEST:
                await self.push_config(name)
                await self.jobs.resend_now(name)
                if self.commands is not None:
                    await self.commands.resend_now(name)
                self.wake_outbox()
            case wire.MsgType.REFUSED:
                refused: wire.Refused = env.parsed(wire.Refused)
                await self.security(
                    peer.client_id, "instruction.refused", refused.message_id or None, refused.reason
                )
                if refused.report_id:
                    await self.send(peer, wire.ReportAck(report_ids=(refused.report_id,)))
            case _:
                log.warning("unexpected %s from %s", env.type, peer)

    async def _on_command_report(self, peer: wire.Peer, report: wire.CommandReport) -> None:
        if self.commands is not None:
            try:
                cmd = await self.commands.get(report.command_id)
            except Exception:
                cmd = None
            if cmd is not None and cmd.device_name != peer.name:
                await self.security(
                    peer.client_id, "report.forged", cmd.id, f"report on a command of {cmd.device_name}"
                )
            elif cmd is not None:
                await self.commands.transition(
                    cmd.id,
                    report.state,
                    detail=report.detail,
                    source=peer.client_id,
                    result=report.result or None,
                    at=report.at,
                )
        await self.send(peer, wire.ReportAck(report_ids=(report.report_id,)))

    async def _on_claim(self, peer: wire.Peer, claim: wire.JobClaim) -> None:
        result = await self.router.claim(claim.job_id, peer.client_id, wire.now_ms())
        if result.reason == RETRY_LATER:
            return  # no answer: the executor asks again
        if not result.granted:
            log.info("claim of job %s by %s refused: %s", claim.job_id, peer, result.reason)
            await self.router.refuse_claim_outcome(claim.job_id, result)
            if not await self._ever_held(peer, claim.job_id):
                await self.security(
                    peer.client_id, "claim.forged", claim.job_id, f"claim refused: {result.reason}"
                )
        await self.send(
            peer,
            wire.JobGrant(
                job_id=claim.job_id,
                granted=result.granted,
                lease_until=result.lease_until,
                reason=result.reason,
            ),
        )

    async def _ever_held(self, peer: wire.Peer, job_id: str) -> bool:
        """Whether ``peer`` is or was a legitimate executor of the job (its host, or a bridge it was
        offered to): a claim from anyone else is an attempt, not a race."""
        try:
            job = await self.jobs.get(job_id)
        except Exception:
            return False
        if peer.role is wire.Role.DEVICE:
            return job.device_name == peer.name
        return peer.name in (job.tried_bridges or ())

    async def _on_bridge_ready(self, peer: wire.Peer, ready: wire.BridgeReady) -> None:
        now = wire.now_ms()
        job, refusal = await self.router.bridge_ready(peer.name, ready, now)
        if job is None or job.payload is None:
            await self.send(
                peer, wire.JobGrant(job_id=ready.job_id, granted=False, reason=refusal or "payload purged")
            )
            self.wake_outbox()
            return
        body = wire.JobPrint(
            job_id=job.id,
            printer=job.printer_name,
            data=base64.b64encode(job.payload).decode(),
            sha256=job.payload_sha256,
            copies=job.copies,
            priority=job.priority,
            order=job.seq,
            submitted_at=job.created_at,
            expires_at=job.expires_at,
            lease_until=now + int(self.router.config.offer_s * 1000),
            attempt=max(job.attempt, 1),
        )
        await self.send(peer, body)

    async def _on_bridge_submit(self, peer: wire.Peer, sub: wire.JobSubmit) -> None:
        bridge = await self.registry.get_device(peer.name)
        if sub.printer not in (bridge.near or ()):
            # a bridge prints for the printers it is registered near, nothing else (a stolen
            # bridge credential must not become a print token for the whole fleet)
            await self.security(peer.client_id, "job.submit", sub.printer, "printer not near this bridge")
            await self.send(
                peer,
                wire.JobAccepted(
                    request_id=sub.request_id,
                    error=f"bridge {peer.name} is not registered near printer {sub.printer!r}",
                ),
            )
            return
        content: Any
        match sub.kind:
            case "text":
                content = sub.text
            case "doc":
                content = sub.document
            case _:
                try:
                    content = base64.b64decode(sub.data or "", validate=True)
                except ValueError:
                    content = None
        try:
            job, _created = await self.jobs.submit(
                Submission(
                    printer=sub.printer,
                    kind=sub.kind,
                    content=content,
                    copies=sub.copies,
                    priority=sub.priority,
                    idempotency_key=sub.idempotency_key,
                    client=peer.client_id,
                    origin=peer.name,
                )
            )
        except Exception as exc:  # a clear refusal back to the phone; nothing was stored
            await self.send(peer, wire.JobAccepted(request_id=sub.request_id, error=str(exc)[:500]))
            return
        if self._audit is not None:
            await self._audit.record(peer.client_id, "job.submit", job.id, outcome="ok", detail=sub.printer)
        await self.send(peer, wire.JobAccepted(request_id=sub.request_id, job_id=job.id))
        self.wake_outbox()

    async def _came_online(self, change: PresenceChange, peer: wire.Peer) -> None:
        if peer.role is wire.Role.BRIDGE:
            self.wake_outbox()
            return
        await self.push_config(change.device)
        await self.jobs.resend_now(change.device)
        if self.commands is not None:
            await self.commands.resend_now(change.device)
        self.wake_outbox()

    async def _on_report(self, peer: wire.Peer, report: wire.JobReport) -> None:
        try:
            job = await self.jobs.get(report.job_id)
        except Exception:
            job = None
        device = await self.registry.get_device(peer.name)
        if not device.enabled:
            await self.security(
                peer.client_id, "report.disabled", report.job_id, "report from a disabled device"
            )
            return
        if job is not None and _holder(job) != peer.client_id:
            former = (peer.role is wire.Role.DEVICE and job.device_name == peer.name) or (
                peer.role is wire.Role.BRIDGE and peer.name in (job.tried_bridges or ())
            )
            if former:  # the job was rerouted: a late report from its former executor changes nothing
                log.info("job %s: %s from %s ignored (held by %s)", job.id, report.state, peer, _holder(job))
            else:
                await self.security(
                    peer.client_id, "report.forged", job.id, f"report on a job of device {job.device_name}"
                )
            job = None  # acknowledged below (so the agent stops resending) but never applied
        if job is not None:
            await self.jobs.transition(
                report.job_id,
                report.state,
                detail=report.detail,
                source=peer.client_id,
                copies_done=report.copies_done,
                at=report.at,
            )
        await self.send(peer, wire.ReportAck(report_ids=(report.report_id,)))

    # -- loops --------------------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_outbox.wait(), timeout=0.5)
            self._wake_outbox.clear()
            if self._client is None:
                continue
            online = await self.presence.online_devices()
            now = wire.now_ms()
            await self.router.lapsed(now, set(online))
            for offer in await self.router.plan(now):
                await self.send(
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
            for job in await self.jobs.due_for_dispatch(online, now):
                await self._dispatch_job(job, now)
            if self.commands is not None:
                for cmd in await self.commands.due(online, now):
                    await self._dispatch_command(cmd, now)

    async def _dispatch_command(self, cmd: Command, now: int) -> None:
        attempt = cmd.attempt + 1
        delay = min(self.config.resend_initial_s * 2 ** (attempt - 1), self.config.resend_max_s)
        body = wire.CommandRun(
            command_id=cmd.id,
            action=cmd.action,
            args=cmd.args,
            requested_by=cmd.requested_by,
            expires_at=cmd.expires_at,
            timeout_s=cmd.timeout_s,
        )
        if await self.send(_device_peer(cmd.device_name), body) and self.commands is not None:
            await self.commands.mark_sent(
                cmd.id,
                attempt=attempt,
                next_attempt_at=now + int(delay * 1000 * (0.8 + 0.4 * random.random())),
            )

    async def _dispatch_job(self, job: Job, now: int) -> None:
        peer = _device_peer(job.device_name)
        attempt = job.attempt + 1
        delay = min(self.config.resend_initial_s * 2 ** (attempt - 1), self.config.resend_max_s)
        lease_until = now + int(self.config.lease_s * 1000)
        if job.expires_at is not None:
            lease_until = min(lease_until, job.expires_at)
        sent_at = wire.now_ms()
        if job.cancel_requested_at is not None:
            sent = await self.send(peer, wire.JobCancel(job_id=job.id, printer=job.printer_name))
        else:
            if job.payload is None:
                await self.jobs.transition(
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
                after=await self.jobs.predecessor(job),
                submitted_at=job.created_at,
                expires_at=job.expires_at,
                lease_until=lease_until,
                attempt=attempt,
            )
            sent = await self.send(peer, body)
        if sent:
            await self.jobs.mark_dispatched(
                job.id,
                attempt=attempt,
                next_attempt_at=now + int(delay * 1000 * (0.8 + 0.4 * random.random())),
                lease_until=lease_until,
                executor=peer.client_id,
                at=sent_at,
            )

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self.presence.expire_deadlines()

    async def _housekeeping_loop(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = wire.now_ms()
            for job in await self.jobs.expired_open_jobs(now):
                await self.jobs.transition(
                    job.id,
                    S.EXPIRED,
                    detail="expired before delivery",
                    source="controller",
                    only_from=QUEUED_ONLY,
                )
            if self.commands is not None:
                undelivered, late = await self.commands.overdue(now, grace_ms=5000)
                for cmd in undelivered:
                    await self.commands.transition(
                        cmd.id,
                        wire.CommandState.EXPIRED,
                        detail="not delivered before it expired",
                        source="controller",
                        only_from=frozenset({wire.CommandState.QUEUED, wire.CommandState.SENT}),
                    )
                for cmd in late:
                    await self.commands.transition(
                        cmd.id,
                        wire.CommandState.TIMED_OUT,
                        detail=f"still running after {cmd.timeout_s} s",
                        source="controller",
                    )
            if loop.time() - last_purge > min(60.0, self.config.payload_retention_s / 2):
                last_purge = loop.time()
                purged = await self.jobs.purge_payloads(now - int(self.config.payload_retention_s * 1000))
                if purged:
                    log.info("purged the payloads of %d finished jobs", purged)

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
        if self._audit is not None:
            await self._audit.record(actor, action, target, outcome="refused", detail=detail)
        else:
            log.warning("%s %s %s refused: %s", actor, action, target, detail)

    def note_broker_refusal(self, refusal: Refusal) -> None:
        """Called by the embedded broker (synchronously) for each refused CONNECT/SUBSCRIBE/PUBLISH."""
        try:
            self._refusals.put_nowait(refusal)
        except asyncio.QueueFull:  # a flood must not grow memory: count what could not be recorded
            self.refusals_dropped += 1

    async def _refusal_loop(self) -> None:
        while True:
            r = await self._refusals.get()
            await self.security(r.client, f"broker.{r.action}", r.target, r.reason)

    async def kick(self, peer: wire.Peer) -> None:
        """Drop a peer's live session (its credentials were just revoked or changed)."""
        if self._on_kick is not None:
            await self._on_kick(peer.client_id)

    async def device_disabled(self, device: str) -> None:
        """Cut a device's live session at once (the broker refuses its credentials from now on)."""
        if self._on_kick is not None:
            await self._on_kick(_device_peer(device).client_id)

    async def device_removed(self, device: str, printers: list[str]) -> None:
        await self.printers_removed(printers)
        if self._on_kick is not None:
            await self._on_kick(_device_peer(device).client_id)


def _holder(job: Job) -> str:
    """The executor a job is routed to (its host's agent until the first dispatch is recorded)."""
    return job.executor or _device_peer(job.device_name).client_id


def _device_peer(name: str) -> wire.Peer:
    return wire.Peer(role=wire.Role.DEVICE, name=name)
