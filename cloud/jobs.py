"""The job store: submission, the job state machine, history, and the outbox queries.

A job is written (state ``queued``) before anything is sent. Every change of state goes through
:func:`allowed` so that a late or duplicated report never moves a job backwards, and every change is
recorded as a :class:`JobEvent`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from cloud.errors import Conflict, ControllerError, NotFound
from cloud.feed import Feed
from cloud.models import Device, Job, JobEvent, Printer
from cloud.render.document import DocumentError, parse_document, text_document
from cloud.render.escpos import render, render_raw
from kernel import wire
from kernel.escpos.profiles import get_profile

log = logging.getLogger(__name__)

S = wire.JobState

#: Progress rank of each state; a report may only move a job to a higher rank (HELD <-> PRINTING
#: move within one rank). Terminal states never change.
_RANK: dict[wire.JobState, int] = {
    S.QUEUED: 0,
    S.DISPATCHED: 1,
    S.DELIVERED: 2,
    S.PRINTING: 3,
    S.HELD: 3,
    S.PRINTED: 4,
    S.FAILED: 4,
    S.EXPIRED: 4,
    S.CANCELLED: 4,
    S.UNKNOWN: 4,
}


_TERMINAL = [st.value for st in wire.TERMINAL_JOB_STATES]


#: Jobs no agent can hold yet: the only ones the controller may end on its own.
QUEUED_ONLY = frozenset({S.QUEUED})


def allowed(current: wire.JobState, new: wire.JobState) -> bool:
    """Whether a job in ``current`` may move to ``new`` (the transition table, as data)."""
    if current.terminal:
        return False
    if new == current:
        return False
    if {current, new} == {S.PRINTING, S.HELD}:
        return True
    return _RANK[new] > _RANK[current]


Kind = Literal["text", "doc", "raw"]


@dataclass(frozen=True, kw_only=True)
class Submission:
    printer: str
    kind: Kind
    content: Any  # str for text, a JSON object for doc, bytes for raw
    copies: int = 1
    priority: int = 0
    ttl_s: float | None = None
    idempotency_key: str | None = None
    client: str = "admin"
    #: The bridge (a user's device) the job came from: tried first when the path is degraded.
    origin: str | None = None

    def request_hash(self) -> str:
        content = self.content
        if isinstance(content, bytes):
            content = base64.b64encode(content).decode()
        blob = json.dumps(
            [self.printer, self.kind, content, self.copies, self.priority, self.ttl_s],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def validated(self) -> Submission:
        if not 1 <= self.copies <= 100:
            raise ControllerError("copies must be between 1 and 100")
        if not -100 <= self.priority <= 100:
            raise ControllerError("priority must be between -100 and 100")
        if self.ttl_s is not None and not 0 < self.ttl_s <= 30 * 24 * 3600:
            raise ControllerError("ttl must be between 1 second and 30 days")
        if self.idempotency_key is not None and not 1 <= len(self.idempotency_key) <= 128:
            raise ControllerError("idempotency key must be 1 to 128 characters")
        return self


def render_submission(sub: Submission, profile_name: str) -> bytes:
    try:
        profile = get_profile(profile_name)
        match sub.kind:
            case "text":
                if not isinstance(sub.content, str) or not sub.content:
                    raise ControllerError("text must be a non-empty string")
                return render(text_document(sub.content), profile)
            case "doc":
                return render(parse_document(sub.content), profile)
            case "raw":
                if not isinstance(sub.content, bytes):
                    raise ControllerError("raw content must be bytes")
                return render_raw(sub.content)
    except DocumentError as exc:
        raise ControllerError(str(exc)) from exc
    raise ControllerError(f"unknown job kind {sub.kind!r}")


#: Job transitions, for long-polls and `jobs watch`.
JobFeed = Feed


class JobStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], feed: JobFeed) -> None:
        self._sessions = sessions
        self.feed = feed
        self._last_seq = 0
        self._seq_lock = asyncio.Lock()

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    async def _next_seq(self, s: AsyncSession) -> int:
        if self._last_seq == 0:
            self._last_seq = int(await s.scalar(select(func.max(Job.seq))) or 0)
        self._last_seq += 1
        return self._last_seq

    # -- submission ---------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> tuple[Job, bool]:
        """Store a new job (state queued); returns (job, created). A repeated key returns the original."""
        sub = sub.validated()
        req_hash = sub.request_hash()
        if sub.idempotency_key is not None:
            existing = await self._by_idempotency(sub.client, sub.idempotency_key)
            if existing is not None:
                return self._check_repeat(existing, req_hash), False
        async with self._sessions() as s:
            printer = await s.scalar(
                select(Printer).where(Printer.name == sub.printer).options(selectinload(Printer.device))
            )
            if printer is None:
                raise NotFound(f"no printer named {sub.printer!r}")
            if sub.origin is not None:
                bridge = await s.scalar(
                    select(Device).where(Device.name == sub.origin, Device.kind == "bridge")
                )
                if bridge is None:
                    raise NotFound(f"no bridge named {sub.origin!r}")
            data = render_submission(sub, printer.profile)
            if len(data) > wire.MAX_JOB_BYTES:
                raise ControllerError(
                    f"the job renders to {len(data)} bytes, over the {wire.MAX_JOB_BYTES}-byte limit"
                )
            now = wire.now_ms()
            async with self._seq_lock:
                job = Job(
                    id=wire.new_id(),
                    seq=await self._next_seq(s),
                    printer_id=printer.id,
                    printer_name=printer.name,
                    device_name=printer.device.name,
                    state=S.QUEUED.value,
                    kind=sub.kind,
                    payload=data,
                    payload_sha256=hashlib.sha256(data).hexdigest(),
                    payload_size=len(data),
                    copies=sub.copies,
                    priority=sub.priority,
                    created_at=now,
                    updated_at=now,
                    expires_at=None if sub.ttl_s is None else now + int(sub.ttl_s * 1000),
                    client=sub.client,
                    idempotency_key=sub.idempotency_key,
                    request_hash=req_hash,
                    next_attempt_at=now,
                    origin=sub.origin,
                )
                job.events.append(
                    JobEvent(
                        at=now,
                        state=S.QUEUED.value,
                        detail=None if sub.origin is None else f"from bridge {sub.origin}",
                        source=f"api:{sub.client}",
                    )
                )
                s.add(job)
                try:
                    await s.commit()
                except IntegrityError:
                    await s.rollback()
                    if sub.idempotency_key is None:
                        raise
                    existing = await self._by_idempotency(sub.client, sub.idempotency_key)
                    if existing is None:
                        raise
                    return self._check_repeat(existing, req_hash), False
        self._announce(job, S.QUEUED, None)
        return await self.get(job.id), True

    async def _by_idempotency(self, client: str, key: str) -> Job | None:
        async with self._sessions() as s:
            return await s.scalar(
                select(Job)
                .where(Job.client == client, Job.idempotency_key == key)
                .options(selectinload(Job.events))
            )

    @staticmethod
    def _check_repeat(existing: Job, req_hash: str) -> Job:
        if existing.request_hash != req_hash:
            raise Conflict("idempotency key already used with a different request")
        return existing

    async def reprint(self, job_id: str, client: str) -> Job:
        """A new job with the same payload, linked to the original (for jobs ended unknown or failed)."""
        original = await self.get(job_id)
        if not S(original.state).terminal:
            raise ControllerError(
                f"job {job_id} is still {original.state}; only finished jobs can be reprinted"
            )
        if original.payload is None:
            raise ControllerError(f"job {job_id}'s payload was purged; submit it again")
        async with self._sessions() as s:
            now = wire.now_ms()
            async with self._seq_lock:
                job = Job(
                    id=wire.new_id(),
                    seq=await self._next_seq(s),
                    printer_id=original.printer_id,
                    printer_name=original.printer_name,
                    device_name=original.device_name,
                    state=S.QUEUED.value,
                    kind=original.kind,
                    payload=original.payload,
                    payload_sha256=original.payload_sha256,
                    payload_size=original.payload_size,
                    copies=original.copies,
                    priority=original.priority,
                    created_at=now,
                    updated_at=now,
                    client=client,
                    next_attempt_at=now,
                    reprint_of=original.id,
                )
                job.events.append(
                    JobEvent(
                        at=now,
                        state=S.QUEUED.value,
                        detail=f"reprint of {original.id}",
                        source=f"api:{client}",
                    )
                )
                s.add(job)
                await s.commit()
        self._announce(job, S.QUEUED, f"reprint of {original.id}")
        return await self.get(job.id)

    # -- transitions --------------------------------------------------------------------------

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
        """Move a job to ``new`` if the state machine allows it; record the event. Idempotent.

        The change is a compare-and-set on the state read (``UPDATE ... WHERE state = <read>``):
        a concurrent change in between (a report racing the outbox) is never overwritten; the move
        is re-judged against the new state. ``only_from`` restricts the move to jobs still in one of
        those states (the controller decides alone only for jobs no agent can hold: ``queued``).
        """
        for _ in range(8):
            async with self._sessions.begin() as s:
                job = await s.get(Job, job_id)
                if job is None:
                    log.warning("transition for unknown job %s ignored", job_id)
                    return False
                current = S(job.state)
                if only_from is not None and current not in only_from:
                    return False
                if not allowed(current, new):
                    if current != new:
                        log.info("job %s: %s -> %s refused (stale or duplicate)", job_id, current, new)
                    return False
                now = wire.now_ms()
                values: dict[str, Any] = {"state": new.value, "updated_at": now}
                if copies_done is not None:
                    values["copies_done"] = max(job.copies_done, copies_done)
                if new.terminal:
                    values.update(finished_at=now, next_attempt_at=None, detail=detail)
                elif new == S.HELD:
                    values["detail"] = detail
                if _RANK[new] >= _RANK[S.DELIVERED]:
                    values["acked"] = True
                result = await s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == current.value)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if not _rowcount(result):
                    await s.rollback()
                    continue  # the state moved meanwhile: judge again
                s.add(JobEvent(job_id=job_id, at=at or now, state=new.value, detail=detail, source=source))
                printer = job.printer_name
            self.feed.publish(
                {"job": job_id, "printer": printer, "state": new.value, "detail": detail, "at": now}
            )
            return True
        log.warning("job %s: %s not applied, the state kept changing", job_id, new)
        return False

    async def mark_dispatched(
        self, job_id: str, *, attempt: int, next_attempt_at: int, lease_until: int, executor: str, at: int
    ) -> None:
        """Record a send: only while no agent has answered (a conditional update, never a blind write)."""
        async with self._sessions.begin() as s:
            job = await s.get(Job, job_id)
            if job is None:
                return
            printer = job.printer_name
            open_states = [S.QUEUED.value, S.DISPATCHED.value]
            await s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(open_states) | Job.cancel_requested_at.is_not(None))
                .where(Job.state.notin_(_TERMINAL), Job.route == "agent")
                .values(
                    attempt=attempt,
                    next_attempt_at=next_attempt_at,
                    lease_until=lease_until,
                    executor=executor,
                )
                .execution_options(synchronize_session=False)
            )
            first = _rowcount(
                await s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == S.QUEUED.value, Job.route == "agent")
                    .values(state=S.DISPATCHED.value, updated_at=at)
                    .execution_options(synchronize_session=False)
                )
            )
            if first:
                s.add(
                    JobEvent(job_id=job_id, at=at, state=S.DISPATCHED.value, detail=None, source="controller")
                )
        if first:
            self.feed.publish(
                {"job": job_id, "printer": printer, "state": S.DISPATCHED.value, "detail": None, "at": at}
            )

    async def request_cancel(self, job_id: str, source: str) -> None:
        """Ask the agent holding a job to cancel it; the job ends cancelled only when the agent agrees."""
        now = wire.now_ms()
        async with self._sessions.begin() as s:
            job = await s.get(Job, job_id)
            if job is None:
                return
            done = _rowcount(
                await s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state.notin_(_TERMINAL), Job.cancel_requested_at.is_(None))
                    .values(cancel_requested_at=now, next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
            )
            if done:
                s.add(
                    JobEvent(job_id=job_id, at=now, state=job.state, detail="cancel requested", source=source)
                )

    def _announce(self, job: Job, state: wire.JobState, detail: str | None) -> None:
        self.feed.publish(
            {
                "job": job.id,
                "printer": job.printer_name,
                "state": state.value,
                "detail": detail,
                "at": wire.now_ms(),
            }
        )

    # -- queries ------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        async with self._sessions() as s:
            job = await s.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.events)))
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job

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
                        and_(Job.cancel_requested_at.is_not(None), Job.state.notin_(_TERMINAL)),
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
                    Job.state.notin_(_TERMINAL),
                )
                .order_by(Job.seq.desc())
                .limit(1)
            )

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

    async def open_jobs_for_printers(self, printers: Sequence[str]) -> Sequence[Job]:
        async with self._sessions() as s:
            q = select(Job).where(
                Job.printer_name.in_(list(printers)),
                Job.state.notin_(_TERMINAL),
            )
            return (await s.scalars(q)).all()

    async def expired_open_jobs(self, now: int) -> Sequence[Job]:
        """Jobs past their expiry that were never sent to an agent (so none can print them).

        A job already sent may be in an agent's journal: only that agent may end it (it applies the
        same expiry rule, on the controller's clock, and reports ``expired``).
        """
        async with self._sessions() as s:
            q = select(Job).where(
                Job.expires_at.is_not(None),
                Job.expires_at < now,
                Job.state == S.QUEUED.value,
            )
            return (await s.scalars(q)).all()

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


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def job_view(job: Job, *, events: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "printer": job.printer_name,
        "device": job.device_name,
        "state": job.state,
        "kind": job.kind,
        "copies": job.copies,
        "copies_done": job.copies_done,
        "priority": job.priority,
        "size": job.payload_size,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "expires_at": job.expires_at,
        "finished_at": job.finished_at,
        "detail": job.detail,
        "attempts": job.attempt,
        "executor": job.executor,
        "route": job.route,
        "origin": job.origin,
        "reprint_of": job.reprint_of,
        "payload_purged": job.purged_at is not None,
        "idempotency_key": job.idempotency_key,
    }
    if events:
        out["events"] = [
            {"at": e.at, "state": e.state, "detail": e.detail, "source": e.source} for e in job.events
        ]
    return out
