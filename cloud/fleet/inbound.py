"""What the controller does with each message from the fleet: one handler per message type.

:data:`HANDLERS` maps a :class:`~kernel.wire.MsgType` to its handler. Accepted messages wait in two
lanes (:class:`Inbound`) so that a flood of job reports never delays presence, round-trip
measurement or a claim an executor waits on (:data:`FAST_LANE`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable

from cloud.errors import NotFound
from cloud.fleet.context import Fleet
from cloud.jobs.intake import NotNear
from cloud.jobs.routing import RETRY_LATER
from cloud.models import Job
from cloud.presence import PresenceChange
from kernel import wire

log = logging.getLogger(__name__)

M = wire.MsgType
Handler = Callable[[Fleet, wire.Peer, wire.Envelope], Awaitable[None]]

#: Messages acted on ahead of job and command reports: presence, heartbeats (whose round trip
#: decides whether a path is degraded: it must not include the controller's report backlog) and
#: the claims an executor waits on before printing.
FAST_LANE = frozenset(
    {M.BIRTH, M.WILL, M.HEARTBEAT, M.HEARTBEAT_ECHO, M.JOB_CLAIM, M.BRIDGE_READY, M.BRIDGE_FAILED}
)


class Inbound:
    """The two lanes, and the loop that empties each (one task per lane)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self.fast: asyncio.Queue[tuple[wire.Peer, wire.Envelope]] = asyncio.Queue(maxsize=10_000)
        self.slow: asyncio.Queue[tuple[wire.Peer, wire.Envelope]] = asyncio.Queue(maxsize=10_000)

    async def put(self, peer: wire.Peer, env: wire.Envelope) -> None:
        """Queue an accepted message in its lane (waits when the lane is full)."""
        await (self.fast if env.type in FAST_LANE else self.slow).put((peer, env))

    async def run_lane(self, queue: asyncio.Queue[tuple[wire.Peer, wire.Envelope]]) -> None:
        """Act on accepted messages in arrival order."""
        while True:
            peer, env = await queue.get()
            try:
                await dispatch(self._fleet, peer, env)
            except wire.WireError as exc:
                log.warning("dropped %s from %s: %s", env.type, peer, exc)


async def dispatch(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    handler = HANDLERS.get(env.type)
    if handler is None:
        log.warning("unexpected %s from %s", env.type, peer)
        return
    await handler(fleet, peer, env)


# -- presence -----------------------------------------------------------------------------------


async def _came_online(fleet: Fleet, change: PresenceChange, peer: wire.Peer) -> None:
    if peer.role is wire.Role.BRIDGE:
        fleet.wake_outbox()
        return
    await fleet.resend_all(change.device)


async def on_birth(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    change = await fleet.presence.on_birth(peer.name, env.parsed(wire.Birth))
    if change is not None:
        await _came_online(fleet, change, peer)


async def on_will(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    await fleet.presence.on_will(peer.name, env.parsed(wire.Will))


async def on_heartbeat(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    hb: wire.Heartbeat = env.parsed(wire.Heartbeat)
    change = await fleet.presence.on_heartbeat(peer.name, hb)
    if change is None:
        return
    if hb.kids:
        fleet.link.trusted[peer.name] = hb.kids
        if set(hb.kids) != {k.kid for k in fleet.link.keyring.keys}:
            await fleet.push_keys(peer)
    device = await fleet.registry.get_device(peer.name)
    await fleet.send(
        peer, wire.HeartbeatAck(hb_seq=hb.hb_seq, ctl_ts=wire.now_ms(), config_version=device.config_version)
    )
    if change.came_online:
        await _came_online(fleet, change, peer)
    elif change.config_stale and peer.role is wire.Role.DEVICE:
        await fleet.push_config(peer.name)


async def on_echo(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    await fleet.presence.on_echo(peer.name, env.parsed(wire.HeartbeatEcho))


async def on_sync_request(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    if peer.role is wire.Role.BRIDGE:
        fleet.wake_outbox()
        return
    await fleet.resend_all(peer.name)


# -- reports ------------------------------------------------------------------------------------


def holder(job: Job) -> str:
    """The executor a job is routed to (its host's agent until the first dispatch is recorded)."""
    return job.executor or wire.Peer(role=wire.Role.DEVICE, name=job.device_name).client_id


def ever_held(peer: wire.Peer, job: Job | None) -> bool:
    """Whether ``peer`` is or was a legitimate executor of the job (its host, or a bridge it was
    offered to): a claim or report from anyone else is an attempt, not a race."""
    if job is None:
        return False
    if peer.role is wire.Role.DEVICE:
        return job.device_name == peer.name
    return peer.name in (job.tried_bridges or ())


async def on_job_report(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    report: wire.JobReport = env.parsed(wire.JobReport)
    job = await fleet.jobs.get_or_none(report.job_id)
    device = await fleet.registry.get_device(peer.name)
    if not device.enabled:
        await fleet.security(
            peer.client_id, "report.disabled", report.job_id, "report from a disabled device"
        )
        return
    if job is not None and holder(job) != peer.client_id:
        if ever_held(peer, job):  # the job was rerouted: a late report from its former executor
            log.info("job %s: %s from %s ignored (held by %s)", job.id, report.state, peer, holder(job))
        else:
            await fleet.security(
                peer.client_id, "report.forged", job.id, f"report on a job of device {job.device_name}"
            )
        job = None  # acknowledged below (so the executor stops resending) but never applied
    if job is not None:
        await fleet.jobs.transition(
            report.job_id,
            report.state,
            detail=report.detail,
            source=peer.client_id,
            copies_done=report.copies_done,
            at=report.at,
        )
    await fleet.send(peer, wire.ReportAck(report_ids=(report.report_id,)))


async def on_command_report(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    report: wire.CommandReport = env.parsed(wire.CommandReport)
    if fleet.commands is not None:
        try:
            cmd = await fleet.commands.get(report.command_id)
        except NotFound:
            cmd = None
        if cmd is not None and cmd.device_name != peer.name:
            await fleet.security(
                peer.client_id, "report.forged", cmd.id, f"report on a command of {cmd.device_name}"
            )
        elif cmd is not None:
            await fleet.commands.transition(
                cmd.id,
                report.state,
                detail=report.detail,
                source=peer.client_id,
                result=report.result or None,
                at=report.at,
            )
    await fleet.send(peer, wire.ReportAck(report_ids=(report.report_id,)))


async def on_refused(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    refused: wire.Refused = env.parsed(wire.Refused)
    await fleet.security(peer.client_id, "instruction.refused", refused.message_id or None, refused.reason)
    if refused.report_id:
        await fleet.send(peer, wire.ReportAck(report_ids=(refused.report_id,)))


# -- the right to print, and the degraded path ---------------------------------------------------


async def on_claim(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    claim: wire.JobClaim = env.parsed(wire.JobClaim)
    result = await fleet.router.claim(claim.job_id, peer.client_id, wire.now_ms())
    if result.reason == RETRY_LATER:
        return  # no answer: the executor asks again
    if not result.granted:
        log.info("claim of job %s by %s refused: %s", claim.job_id, peer, result.reason)
        await fleet.router.refuse_claim_outcome(claim.job_id, result)
        if not ever_held(peer, await fleet.jobs.get_or_none(claim.job_id)):
            await fleet.security(
                peer.client_id, "claim.forged", claim.job_id, f"claim refused: {result.reason}"
            )
    await fleet.send(
        peer,
        wire.JobGrant(
            job_id=claim.job_id, granted=result.granted, lease_until=result.lease_until, reason=result.reason
        ),
    )


async def on_bridge_ready(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    ready: wire.BridgeReady = env.parsed(wire.BridgeReady)
    now = wire.now_ms()
    job, refusal = await fleet.router.bridge_ready(peer.name, ready, now)
    if job is None or job.payload is None:
        await fleet.send(
            peer, wire.JobGrant(job_id=ready.job_id, granted=False, reason=refusal or "payload purged")
        )
        fleet.wake_outbox()
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
        lease_until=now + int(fleet.router.config.offer_s * 1000),
        attempt=max(job.attempt, 1),
    )
    await fleet.send(peer, body)


async def on_bridge_failed(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    if await fleet.router.bridge_failed(peer.name, env.parsed(wire.BridgeFailed), wire.now_ms()):
        fleet.wake_outbox()


async def on_bridge_submit(fleet: Fleet, peer: wire.Peer, env: wire.Envelope) -> None:
    sub: wire.JobSubmit = env.parsed(wire.JobSubmit)
    bridge = await fleet.registry.get_device(peer.name)
    try:
        job = await fleet.intake.submit_from_bridge(bridge, peer, sub)
    except NotNear as exc:
        await fleet.security(peer.client_id, "job.submit", sub.printer, "printer not near this bridge")
        await fleet.send(peer, wire.JobAccepted(request_id=sub.request_id, error=str(exc)))
        return
    except Exception as exc:  # a clear refusal back to the phone; nothing was stored
        await fleet.send(peer, wire.JobAccepted(request_id=sub.request_id, error=str(exc)[:500]))
        return
    if fleet.audit is not None:
        await fleet.audit.record(peer.client_id, "job.submit", job.id, outcome="ok", detail=sub.printer)
    await fleet.send(peer, wire.JobAccepted(request_id=sub.request_id, job_id=job.id))
    fleet.wake_outbox()


HANDLERS: dict[wire.MsgType, Handler] = {
    M.BIRTH: on_birth,
    M.WILL: on_will,
    M.HEARTBEAT: on_heartbeat,
    M.HEARTBEAT_ECHO: on_echo,
    M.JOB_REPORT: on_job_report,
    M.CMD_REPORT: on_command_report,
    M.JOB_CLAIM: on_claim,
    M.BRIDGE_READY: on_bridge_ready,
    M.BRIDGE_FAILED: on_bridge_failed,
    M.JOB_SUBMIT: on_bridge_submit,
    M.SYNC_REQUEST: on_sync_request,
    M.REFUSED: on_refused,
}
