"""Degraded-path routing: which executor may print a job, and when a job goes to a phone bridge.

A printer's path is *degraded* when its host is offline, or online with a measured round trip
above the printer's latency threshold. A job on a degraded path goes to a bridge: first the
bridge it came from (its ``origin``), then any online bridge registered near the printer.

Routing reads jobs and decides; every write is asked of the :class:`~cloud.jobs.store.JobStore`
(a judge per move, applied as one compare-and-set through the state machine). One executor at a
time. The rules:

* An executor (agent or bridge) writes no byte of a job before the controller granted its
  :class:`~kernel.wire.JobClaim`. A claim is granted only while the job is routed to that
  executor; once granted (``claimed_at``) the job is never rerouted: if its executor goes away
  mid-job the job ends ``unknown`` (surfaced, never reprinted silently).
* An unclaimed job is rerouted only if its agent never acknowledged it (``dispatched``) or the
  lease it was sent with has lapsed. A host that comes back with the job still in its journal
  claims it, is refused, and prints nothing.
* A bridge gets a short-lived offer (connection information and a grant). If it does not report
  "connected to the right printer" before the offer lapses, or reports a failure, the job goes back
  to the normal path, from which the next bridge may take it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from cloud.jobs.states import RELEASE_FROM, REROUTE_FROM, Cause
from cloud.jobs.store import CONTENDED, Change, JobStore, Refused
from cloud.models import Device, Job, Printer
from kernel import wire

log = logging.getLogger(__name__)

S = wire.JobState
_TERMINAL = [st.value for st in wire.TERMINAL_JOB_STATES]


#: The reason of a claim answer that is not a refusal: ask again (the executor keeps the job).
RETRY_LATER = CONTENDED

#: A bridge still online but silent this long past its lease is treated as gone.
BRIDGE_SILENCE_MS = 300_000


@dataclass(frozen=True, kw_only=True)
class Claim:
    granted: bool
    lease_until: int | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Offer:
    """An offer recorded in the database, ready to be sent to its bridge."""

    job_id: str
    offer_id: str
    bridge: str
    printer: wire.BlePrinter
    grant_until: int
    size: int
    sha256: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    #: A printer's path is degraded above this host round trip (unless the printer sets its own).
    latency_threshold_ms: int = 1000
    #: How long an agent may hold an unclaimed job before it may be rerouted (host offline).
    lease_s: float = 30.0
    #: How long a bridge has to connect to the printer and say so.
    offer_s: float = 30.0
    #: The lease a bridge gets once it holds a job's bytes (BLE is slow: a 48 KB job takes ~15 s).
    bridge_lease_s: float = 120.0
    #: Allowance for clock error between the controller and an executor when judging a lease.
    skew_margin_ms: int = 2000


def ble_printer(printer: Printer) -> wire.BlePrinter:
    return wire.BlePrinter(
        name=printer.name,
        unique_id=printer.unique_id or f"pf-{printer.name}",
        ble_address=printer.ble_address,
        ble_name=printer.ble_name,
        ble_profile=printer.ble_profile,
        public_key=printer.public_key,
        identity=printer.identity,  # checked when set
    )


def degraded_reason(device: Device, printer: Printer, default_threshold_ms: int) -> str | None:
    """Why a printer's normal path is degraded now, or None when it is healthy."""
    if not device.online:
        return f"host {device.name} offline"
    threshold = printer.latency_threshold_ms or default_threshold_ms
    if device.latency_ms is not None and device.latency_ms > threshold:
        return f"host {device.name} round trip {device.latency_ms:.0f} ms > {threshold} ms"
    return None


def reachable_over_ble(printer: Printer) -> bool:
    return bool(printer.ble_address or printer.ble_name)


class Router:
    def __init__(self, jobs: JobStore, config: RoutingConfig) -> None:
        self._jobs = jobs
        self._sessions = jobs.sessions
        self.config = config

    # -- the right to print -------------------------------------------------------------------

    async def claim(self, job_id: str, executor: str, now: int) -> Claim:
        """Grant ``executor`` the right to start writing ``job_id``, if the job is still its to print.

        A concurrent change (the outbox recording a dispatch, a report) is never a reason to refuse:
        the store judges the claim again on the new row. Only a definite answer (routed elsewhere,
        finished, cancelled, expired) refuses it.
        """
        lease_s = self.config.bridge_lease_s if executor.startswith("brg-") else self.config.lease_s

        def judge(job: Job) -> Change | Refused:
            if wire.JobState(job.state).terminal:
                return Refused(reason=f"job already {job.state}")
            holder = job.executor or wire.Peer(role=wire.Role.DEVICE, name=job.device_name).client_id
            if holder != executor:
                return Refused(reason=f"job routed to {holder}")
            if job.cancel_requested_at is not None and job.claimed_at is None:
                return Refused(reason="cancel requested")
            if job.claimed_at is None and job.expires_at is not None and now > job.expires_at:
                return Refused(reason="expired before printing")
            lease_until = now + int(lease_s * 1000)
            if job.expires_at is not None and job.claimed_at is None:
                lease_until = min(lease_until, max(job.expires_at, now + 1000))
            return Change(
                values={
                    "claimed_at": job.claimed_at or now,
                    "lease_until": lease_until,
                    "executor": executor,
                    "updated_at": now,
                },
                detail=f"granted to {executor}",
                source=executor,
                at=now,
                note=job.claimed_at is None,
            )

        result = await self._jobs.apply(job_id, judge)
        if isinstance(result, Refused):
            if result.reason == CONTENDED:
                log.warning("claim of job %s by %s: the job kept changing; not answered", job_id, executor)
            return Claim(granted=False, reason=result.reason)
        return Claim(granted=True, lease_until=result.values["lease_until"])

    async def refuse_claim_outcome(self, job_id: str, claim: Claim) -> None:
        """A refused claim can end a job the claimant will now never print (cancel, expiry)."""
        if claim.reason == "cancel requested":
            await self._jobs.transition(
                job_id, S.CANCELLED, detail="cancelled before printing", source="controller"
            )
        elif claim.reason == "expired before printing":
            await self._jobs.transition(
                job_id, S.EXPIRED, detail="stale: expired before printing", source="controller"
            )

    # -- planning offers ----------------------------------------------------------------------

    def _reroutable(self, now: int) -> Any:
        """Jobs on the normal path nobody holds the right to print, that may change executor now."""
        margin = self.config.skew_margin_ms
        return and_(
            Job.route == "agent",
            Job.claimed_at.is_(None),
            Job.cancel_requested_at.is_(None),
            Job.payload.is_not(None),
            Job.state.in_([st.value for st in REROUTE_FROM]),
            or_(
                Job.state == S.QUEUED.value,
                and_(Job.state == S.DISPATCHED.value, Job.acked.is_(False)),
                and_(Job.lease_until.is_not(None), Job.lease_until < now - margin),
            ),
        )

    async def plan(self, now: int, limit: int = 100) -> list[Offer]:
        """Offer every reroutable job on a degraded path to a bridge that can take it (recorded first)."""
        async with self._sessions() as s:
            jobs = (
                await s.scalars(
                    select(Job)
                    .where(self._reroutable(now))
                    .order_by(Job.priority.desc(), Job.seq)
                    .limit(limit)
                )
            ).all()
            if not jobs:
                return []
            printers = {
                p.name: p
                for p in (
                    await s.scalars(select(Printer).where(Printer.name.in_({j.printer_name for j in jobs})))
                ).all()
            }
            devices = {d.id: d for d in (await s.scalars(select(Device))).all()}
        bridges = [d for d in devices.values() if d.kind == "bridge" and d.online and d.enabled]
        if not bridges:
            return []
        offers: list[Offer] = []
        for job in jobs:
            printer = printers.get(job.printer_name)
            if printer is None or not reachable_over_ble(printer):
                continue
            host = devices.get(printer.device_id)
            if host is None or not host.enabled:
                continue  # a disabled host's work stays undelivered
            reason = degraded_reason(host, printer, self.config.latency_threshold_ms)
            if reason is None:
                continue
            bridge = self._pick_bridge(job, printer, bridges)
            if bridge is None:
                continue
            offer = await self._record_offer(job, printer, bridge, reason, now)
            if offer is not None:
                offers.append(offer)
        return offers

    @staticmethod
    def _pick_bridge(job: Job, printer: Printer, bridges: Sequence[Device]) -> Device | None:
        tried = set(job.tried_bridges or ())
        candidates = [b for b in bridges if b.name not in tried]
        for b in candidates:
            if b.name == job.origin:
                return b
        near = sorted((b for b in candidates if printer.name in (b.near or ())), key=lambda b: b.name)
        return near[0] if near else None

    async def _record_offer(
        self, planned: Job, printer: Printer, bridge: Device, reason: str, now: int
    ) -> Offer | None:
        offer_id = wire.new_id()
        grant_until = now + int(self.config.offer_s * 1000)
        executor = wire.Peer(role=wire.Role.BRIDGE, name=bridge.name).client_id
        detail = f"rerouted to bridge {bridge.name}: {reason}"

        def judge(job: Job) -> Change | Refused:
            if (job.state, job.executor, job.route) != (planned.state, planned.executor, "agent") or (
                job.claimed_at is not None or job.cancel_requested_at is not None
            ):
                return Refused(reason="moved since planned")  # judged again at the next plan
            return Change(
                state=S.DISPATCHED,
                cause=Cause.REROUTE,
                values={
                    "route": "bridge",
                    "executor": executor,
                    "offer_id": offer_id,
                    "offer_until": grant_until,
                    "lease_until": None,
                    "tried_bridges": [*(job.tried_bridges or ()), bridge.name],
                    "updated_at": now,
                },
                detail=detail,
                at=now,
            )

        if isinstance(await self._jobs.apply(planned.id, judge, attempts=1), Refused):
            return None
        log.info("job %s: %s", planned.id, detail)
        return Offer(
            job_id=planned.id,
            offer_id=offer_id,
            bridge=bridge.name,
            printer=ble_printer(printer),
            grant_until=grant_until,
            size=planned.payload_size,
            sha256=planned.payload_sha256,
            reason=reason,
        )

    # -- the bridge's answers -----------------------------------------------------------------

    async def bridge_ready(
        self, bridge: str, ready: wire.BridgeReady, now: int
    ) -> tuple[Job | None, str | None]:
        """(job to hand over, None) when the bridge may have it; (None, reason) when not."""
        executor = wire.Peer(role=wire.Role.BRIDGE, name=bridge).client_id
        async with self._sessions() as s:
            job = await s.get(Job, ready.job_id)
            printer = (
                None
                if job is None
                else await s.scalar(select(Printer).where(Printer.name == job.printer_name))
            )
        if job is None or job.executor != executor or job.offer_id != ready.offer_id:
            return None, "not your offer"
        if S(job.state).terminal:
            return None, f"job already {job.state}"
        if job.claimed_at is None and (job.offer_until or 0) < now:
            await self.release(
                job.id, ready.offer_id, f"bridge {bridge} connected after the offer lapsed", now
            )
            return None, "offer lapsed"
        policy = printer.identity if printer is not None else "preferred"
        if policy == "required" and ready.identity != "verified":
            await self.release(
                job.id,
                ready.offer_id,
                f"bridge {bridge}: printer identity {ready.identity}, policy required",
                now,
            )
            return None, "identity required"
        note = {
            "verified": "identity verified",
            "unverified": "identity unverified",
            "skipped": "identity not checked (policy off)",
        }[ready.identity]
        detail = f"bridge {bridge} connected to the printer ({note}; {ready.profile or 'profile ?'})"

        def judge(row: Job) -> Change | Refused:
            values: dict[str, Any] = {}
            if row.offer_id == ready.offer_id and row.claimed_at is None:
                # the bridge has its hand-over time from now on
                values = {"offer_until": now + int(self.config.offer_s * 1000), "detail": note}
            if S(row.state) in (S.QUEUED, S.DISPATCHED):
                return Change(state=S.DELIVERED, values=values, detail=detail, source=executor, at=now)
            return Change(values=values) if values else Refused(reason=f"job {row.state}")

        await self._jobs.apply(job.id, judge)
        return job, None

    async def release(
        self,
        job_id: str,
        offer_id: str,
        reason: str,
        now: int,
        *,
        executor: str | None = None,
        undo_claim: bool = False,
    ) -> bool:
        """Take a job back from a bridge before it was granted the right to print: the normal path
        (or the next bridge) takes over (:attr:`~cloud.jobs.states.Cause.RELEASE`).

        ``executor``: only if the job is offered to that bridge (a bridge's own ``bridge.failed``).
        ``undo_claim``: that bridge says it wrote nothing, so a grant it had is void.
        """

        def judge(job: Job) -> Change | Refused:
            if executor is not None and job.executor != executor:
                return Refused(reason="not offered to this bridge")
            if job.route != "bridge" or job.offer_id != offer_id or S(job.state) not in RELEASE_FROM:
                return Refused(reason="not on this offer")
            if job.claimed_at is not None and not undo_claim:
                return Refused(reason="granted")
            return Change(
                state=S.DISPATCHED,
                cause=Cause.RELEASE,
                values={
                    "route": "agent",
                    "executor": wire.Peer(role=wire.Role.DEVICE, name=job.device_name).client_id,
                    "claimed_at": None,
                    "offer_id": None,
                    "offer_until": None,
                    "next_attempt_at": now,
                    "updated_at": now,
                },
                detail=f"back to the normal path: {reason}",
                at=now,
            )

        return isinstance(await self._jobs.apply(job_id, judge), Change)

    async def bridge_failed(self, bridge: str, failed: wire.BridgeFailed, now: int) -> bool:
        """The bridge wrote nothing: undo its claim (if any) and take the job back."""
        executor = wire.Peer(role=wire.Role.BRIDGE, name=bridge).client_id
        return await self.release(
            failed.job_id,
            failed.offer_id,
            f"bridge {bridge}: {failed.reason}",
            now,
            executor=executor,
            undo_claim=True,
        )

    async def lapsed(self, now: int, online: set[str]) -> None:
        """Offers no bridge answered go back; a claimed job whose bridge went silent ends unknown."""
        margin = self.config.skew_margin_ms
        async with self._sessions() as s:
            jobs = (
                await s.scalars(
                    select(Job).where(
                        Job.route == "bridge",
                        Job.state.notin_(_TERMINAL),
                        or_(
                            and_(Job.claimed_at.is_(None), Job.offer_until < now),
                            and_(Job.claimed_at.is_not(None), Job.lease_until < now - margin),
                        ),
                    )
                )
            ).all()
        for job in jobs:
            bridge = (job.executor or "").removeprefix("brg-")
            if job.claimed_at is None:
                await self.release(
                    job.id, job.offer_id or "", f"bridge {bridge} did not connect in time", now
                )
            elif bridge not in online or (job.lease_until or 0) < now - BRIDGE_SILENCE_MS:
                await self._jobs.transition(
                    job.id,
                    S.UNKNOWN,
                    detail=f"bridge {bridge} went silent while it held the job; it may have printed",
                    source="controller",
                )
