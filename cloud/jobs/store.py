"""The job store: the one writer of job rows.

Every change of a job's state is one compare-and-set through :mod:`cloud.jobs.states`
(:meth:`JobStore.apply`): the row is read, a *judge* (the caller's rule: a report, a claim, an
offer) decides what to write from what it read, the state machine checks the move, and the write
is ``UPDATE ... WHERE`` the row still is as read. A concurrent change in between (a report racing
the outbox) is never overwritten: the judge decides again on the new row. The move's event is
recorded and published here, and only here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from cloud.errors import Conflict, NotFound
from cloud.feed import Feed
from cloud.jobs.states import RANK, Cause, allowed
from cloud.models import Job, JobEvent
from kernel import wire

log = logging.getLogger(__name__)

S = wire.JobState
TERMINAL = [st.value for st in wire.TERMINAL_JOB_STATES]

#: The reason :meth:`JobStore.apply` gives when the row kept changing under it (ask again later).
CONTENDED = "busy, ask again"

NO_SUCH_JOB = "no such job"

#: Job transitions, for long-polls and `jobs watch`.
JobFeed = Feed

#: The columns a judge's decision depends on besides the state: a write is conditional on all of
#: them still holding the values read (who holds the job, on which path, claimed, cancelled).
_WATCHED = ("route", "executor", "claimed_at", "cancel_requested_at", "offer_id")


@dataclass(frozen=True, kw_only=True)
class Change:
    """What a judge decided for one job row."""

    #: The new state; None: the state stays (only other columns change).
    state: wire.JobState | None = None
    cause: Cause = Cause.PROGRESS
    #: Other columns to write (they override what the new state implies).
    values: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None
    source: str = "controller"
    #: When it happened (a report's own time); default: now.
    at: int | None = None
    #: Record an event in the job's history although the state stays (a grant, a cancel request).
    note: bool = False


@dataclass(frozen=True, kw_only=True)
class Refused:
    reason: str


Judge = Callable[[Job], "Change | Refused"]


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A job ready to store (rendered and checked by :mod:`cloud.jobs.intake`)."""

    printer_id: int | None
    printer_name: str
    device_name: str
    kind: str
    payload: bytes
    payload_sha256: str
    copies: int
    priority: int
    client: str
    expires_at: int | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    origin: str | None = None
    reprint_of: str | None = None
    #: The first event's detail (where the job came from).
    detail: str | None = None


class JobStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], feed: JobFeed) -> None:
        self._sessions = sessions
        self.feed = feed
        self._last_seq = 0
        self._seq_lock = asyncio.Lock()

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """For readers (routing plans, queries); writes go through this store."""
        return self._sessions

    # -- the one compare-and-set --------------------------------------------------------------

    async def apply(self, job_id: str, judge: Judge, *, attempts: int = 8) -> Change | Refused:
        """Read the job, let ``judge`` decide, and write its decision if the row did not move meanwhile.

        Returns the change written, or why nothing was (the judge's refusal, the state machine's,
        ``no such job``, or :data:`CONTENDED` when the row kept changing).
        """
        for _ in range(attempts):
            async with self._sessions.begin() as s:
                job = await s.get(Job, job_id)
                if job is None:
                    return Refused(reason=NO_SUCH_JOB)
                verdict = judge(job)
                if isinstance(verdict, Refused):
                    return verdict
                current = S(job.state)
                now = wire.now_ms()
                values: dict[str, Any] = {}
                if verdict.state is not None:
                    if not allowed(current, verdict.state, verdict.cause):
                        if current != verdict.state or verdict.cause is not Cause.PROGRESS:
                            log.info(
                                "job %s: %s -> %s (%s) refused (stale or duplicate)",
                                job_id,
                                current,
                                verdict.state,
                                verdict.cause,
                            )
                        return Refused(reason=f"job {job.state}: {verdict.state} not allowed")
                    values = _implied(verdict, now)
                values.update(verdict.values)
                if values:
                    done = await s.execute(
                        update(Job)
                        .where(Job.id == job_id, *_as_read(job))
                        .values(**values)
                        .execution_options(synchronize_session=False)
                    )
                    if not int(getattr(done, "rowcount", 0) or 0):
                        await s.rollback()
                        continue  # the row moved between the read and the write: judge it again
                if verdict.state is not None or verdict.note:
                    s.add(
                        JobEvent(
                            job_id=job_id,
                            at=verdict.at or now,
                            state=(verdict.state or current).value,
                            detail=verdict.detail,
                            source=verdict.source,
                        )
                    )
                printer = job.printer_name
            if verdict.state is not None:
                self._publish(job_id, printer, verdict.state, verdict.detail, now)
            return verdict
        log.warning("job %s: not changed, the row kept changing", job_id)
        return Refused(reason=CONTENDED)

    def _publish(self, job_id: str, printer: str, state: wire.JobState, detail: str | None, at: int) -> None:
        self.feed.publish(
            {"job": job_id, "printer": printer, "state": state.value, "detail": detail, "at": at}
        )

    # -- progress -----------------------------------------------------------------------------

    async def transition(
        self,
        job_id: str,
        new: wire.JobState,
        *,
        detail: str | None,
        source: str,
        copies_done: int | None = None,
        at: int | None = None,
        only_from: frozenset[wire.JobState] | None = None,
    ) -> bool:
        """Move a job forward to ``new`` if the state machine allows it; record the event. Idempotent.

        ``only_from`` restricts the move to jobs still in one of those states (the controller decides
        alone only for jobs no agent can hold: ``queued``).
        """

        def judge(job: Job) -> Change | Refused:
            if only_from is not None and S(job.state) not in only_from:
                return Refused(reason=f"job {job.state}")
            values = {} if copies_done is None else {"copies_done": max(job.copies_done, copies_done)}
            return Change(state=new, values=values, detail=detail, source=source, at=at)

        result = await self.apply(job_id, judge)
        if isinstance(result, Refused) and result.reason == NO_SUCH_JOB:
            log.warning("transition for unknown job %s ignored", job_id)
        return isinstance(result, Change)

    async def mark_dispatched(
        self, job_id: str, *, attempt: int, next_attempt_at: int, lease_until: int, executor: str, at: int
    ) -> None:
        """Record a send: only while no agent has answered (never over a later report)."""

        def judge(job: Job) -> Change | Refused:
            state = S(job.state)
            if state.terminal or job.route != "agent":
                return Refused(reason=f"job {job.state} on the {job.route} path")
            if state not in (S.QUEUED, S.DISPATCHED) and job.cancel_requested_at is None:
                return Refused(reason="acknowledged meanwhile")
            values = {
                "attempt": attempt,
                "next_attempt_at": next_attempt_at,
                "lease_until": lease_until,
                "executor": executor,
            }
            if state is S.QUEUED:
                return Change(state=S.DISPATCHED, values={**values, "updated_at": at}, at=at)
            return Change(values=values)

        await self.apply(job_id, judge)

    async def request_cancel(self, job_id: str, source: str) -> None:
        """Ask the agent holding a job to cancel it; the job ends cancelled only when the agent agrees."""
        now = wire.now_ms()

        def judge(job: Job) -> Change | Refused:
            if S(job.state).terminal or job.cancel_requested_at is not None:
                return Refused(reason="finished or already asked")
            values = {"cancel_requested_at": now, "next_attempt_at": now}
            return Change(values=values, detail="cancel requested", source=source, at=now, note=True)

        await self.apply(job_id, judge)

    # -- creation -----------------------------------------------------------------------------

    async def _next_seq(self, s: AsyncSession) -> int:
        if self._last_seq == 0:
            self._last_seq = int(await s.scalar(select(func.max(Job.seq))) or 0)
        self._last_seq += 1
        return self._last_seq

    async def create(self, new: NewJob, *, source: str) -> tuple[Job, bool]:
        """Store a job in state ``queued``: (job, created); a repeated idempotency key gives the original."""
        now = wire.now_ms()
        async with self._sessions() as s, self._seq_lock:
            job = Job(
                id=wire.new_id(),
                seq=await self._next_seq(s),
                printer_id=new.printer_id,
                printer_name=new.printer_name,
                device_name=new.device_name,
                state=S.QUEUED.value,
                kind=new.kind,
                payload=new.payload,
                payload_sha256=new.payload_sha256,
                payload_size=len(new.payload),
                copies=new.copies,
                priority=new.priority,
                created_at=now,
                updated_at=now,
                expires_at=new.expires_at,
                client=new.client,
                idempotency_key=new.idempotency_key,
                request_hash=new.request_hash,
                next_attempt_at=now,
                origin=new.origin,
                reprint_of=new.reprint_of,
            )
            job.events.append(JobEvent(at=now, state=S.QUEUED.value, detail=new.detail, source=source))
            s.add(job)
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                if new.idempotency_key is None:
                    raise
                existing = await self.by_idempotency(new.client, new.idempotency_key)
                if existing is None:
                    raise
                return check_repeat(existing, new.request_hash), False
        self._publish(job.id, new.printer_name, S.QUEUED, new.detail, now)
        return await self.get(job.id), True

    async def by_idempotency(self, client: str, key: str) -> Job | None:
        async with self._sessions() as s:
            return await s.scalar(
                select(Job)
                .where(Job.client == client, Job.idempotency_key == key)
                .options(selectinload(Job.events))
            )

    # -- outbox bookkeeping (no state changes) ------------------------------------------------

    async def resend_now(self, device_name: str) -> None:
        """Make every unacknowledged job of a device due at once (it just came online)."""
        async with self._sessions.begin() as s:
            await s.execute(
                update(Job)
                .where(
                    Job.device_name == device_name,
                    Job.route == "agent",
                    Job.state.in_([S.QUEUED.value, S.DISPATCHED.value]),
                    Job.acked.is_(False),
                )
                .values(next_attempt_at=wire.now_ms())
            )

    async def purge_payloads(self, older_than: int) -> int:
        """Drop the payloads of jobs finished before ``older_than``; metadata and history stay."""
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(Job)
                .where(
                    Job.finished_at.is_not(None),
                    Job.finished_at < older_than,
                    Job.payload.is_not(None),
                )
                .values(payload=None, purged_at=wire.now_ms())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # -- queries ------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        job = await self.get_or_none(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    async def get_or_none(self, job_id: str) -> Job | None:
        async with self._sessions() as s:
            return await s.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.events)))

    async def list(
        self, *, printer: str | None = None, state: str | None = None, limit: int = 100
    ) -> Sequence[Job]:
        async with self._sessions() as s:
            q = select(Job).order_by(Job.seq.desc()).limit(max(1, min(limit, 1000)))
            if printer:
                q = q.where(Job.printer_name == printer)
            if state:
                q = q.where(Job.state == state)
            return (await s.scalars(q)).all()

    async def due_for_dispatch(
        self, device_names: Sequence[str], now: int, limit: int = 200
    ) -> Sequence[Job]:
        """Unacknowledged jobs for online devices whose (re)send time has come, in print order."""
        if not device_names:
            return []
        async with self._sessions() as s:
            q = (
                select(Job)
                .where(
                    Job.device_name.in_(list(device_names)),
                    Job.route == "agent",
                    or_(
                        and_(Job.state.in_([S.QUEUED.value, S.DISPATCHED.value]), Job.acked.is_(False)),
                        and_(Job.cancel_requested_at.is_not(None), Job.state.notin_(TERMINAL)),
                    ),
                    or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
                )
                .order_by(Job.priority.desc(), Job.seq)
                .limit(limit)
            )
            return (await s.scalars(q)).all()

    async def predecessor(self, job: Job) -> str | None:
        """The job just before ``job`` (same printer and priority) that its agent may not have yet."""
        async with self._sessions() as s:
            return await s.scalar(
                select(Job.id)
                .where(
                    Job.printer_name == job.printer_name,
                    Job.priority == job.priority,
                    Job.seq < job.seq,
                    Job.acked.is_(False),
                    Job.state.notin_(TERMINAL),
                )
                .order_by(Job.seq.desc())
                .limit(1)
            )

    async def open_jobs_for_printers(self, printers: Sequence[str]) -> Sequence[Job]:
        async with self._sessions() as s:
            q = select(Job).where(Job.printer_name.in_(list(printers)), Job.state.notin_(TERMINAL))
            return (await s.scalars(q)).all()

    async def expired_open_jobs(self, now: int) -> Sequence[Job]:
        """Jobs past their expiry that were never sent to an agent (so none can print them).

        A job already sent may be in an agent's journal: only that agent may end it (it applies the
        same expiry rule, on the controller's clock, and reports ``expired``).
        """
        async with self._sessions() as s:
            q = select(Job).where(
                Job.expires_at.is_not(None), Job.expires_at < now, Job.state == S.QUEUED.value
            )
            return (await s.scalars(q)).all()


def check_repeat(existing: Job, req_hash: str | None) -> Job:
    """The job an idempotency key already names, if the request is the same one."""
    if existing.request_hash != req_hash:
        raise Conflict("idempotency key already used with a different request")
    return existing


def _implied(change: Change, now: int) -> dict[str, Any]:
    """The columns a move to ``change.state`` implies."""
    new = change.state
    assert new is not None
    values: dict[str, Any] = {"state": new.value, "updated_at": now}
    if new.terminal:
        values.update(finished_at=now, next_attempt_at=None, detail=change.detail)
    elif new == S.HELD:
        values["detail"] = change.detail
    if change.cause is not Cause.PROGRESS:
        values["acked"] = False  # dispatched anew: its new executor has not answered yet
    elif RANK[new] >= RANK[S.DELIVERED]:
        values["acked"] = True
    return values


def _as_read(job: Job) -> list[Any]:
    """The compare half of the compare-and-set: the state and the watched columns as read."""
    conditions: list[Any] = [Job.state == job.state]
    for name in _WATCHED:
        column = getattr(Job, name)
        value = getattr(job, name)
        conditions.append(column.is_(None) if value is None else column == value)
    return conditions
