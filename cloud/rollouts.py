"""Phased rollouts: one command (an update) started on a list of devices at a rate, stopped by
itself once failures pass a threshold.

A rollout is a stored record (table ``rollouts``); its commands are ordinary command records with
its id (``rollout_id``), created one at a time as devices are started, so the rollout survives a
restart of the CLI or of the controller and carries on from what is stored.

* **Rate.** One device is started every ``60 / rate_per_min`` seconds (no burst to catch up after
  the controller was down).
* **Threshold.** The rollout is *aborted* as soon as more than ``abort_above_pct`` % of its devices
  have failed (failed, rejected, timed out, or never delivered before expiring): no further device
  is started, commands not yet sent are cancelled, and updates already running finish. Devices
  never started (or whose command was cancelled) are reported as *skipped*.
* **Resume.** An aborted rollout can be resumed: its skipped devices are started again at the same
  rate; failures from before the resume no longer count against the threshold.

States: ``running -> completed | aborted``, ``aborted -> running`` (resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.commands import CommandStore
from cloud.errors import ControllerError, NotFound
from cloud.feed import Feed
from cloud.models import Command, Device, Rollout
from kernel import wire

log = logging.getLogger(__name__)
C = wire.CommandState


class RolloutState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"


#: Allowed rollout transitions, as data.
TRANSITIONS: frozenset[tuple[RolloutState, RolloutState]] = frozenset(
    {
        (RolloutState.RUNNING, RolloutState.COMPLETED),
        (RolloutState.RUNNING, RolloutState.ABORTED),
        (RolloutState.ABORTED, RolloutState.RUNNING),
    }
)


class DeviceState(StrEnum):
    """A device's place in a rollout."""

    PENDING = "pending"  # not started yet
    RUNNING = "running"  # its command is queued, on its way or running
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not started (or its command cancelled) because the rollout stopped


FAILURES = frozenset({C.FAILED, C.REJECTED, C.TIMED_OUT, C.EXPIRED})
_TERMINAL = [s.value for s in wire.TERMINAL_COMMAND_STATES]

#: Builds a command's args from the rollout's, for a command valid until ``until_ms`` (a package
#: download grant expires with the command).
ArgsFactory = Callable[[dict[str, Any], int], dict[str, Any]]


def device_state(rollout: Rollout, cmd: Command | None) -> DeviceState:
    if cmd is None or cmd.state == C.CANCELLED.value:
        return DeviceState.PENDING if rollout.state == RolloutState.RUNNING else DeviceState.SKIPPED
    state = C(cmd.state)
    if state is C.SUCCEEDED:
        return DeviceState.SUCCEEDED
    if state in FAILURES:
        return DeviceState.FAILED
    return DeviceState.RUNNING


def failures_allowed(total: int, abort_above_pct: float) -> int:
    """How many failures a rollout of ``total`` devices tolerates: one more aborts it."""
    return int(total * abort_above_pct / 100 + 1e-9)


class Rollouts:
    """The stored rollouts and the loop that advances them (one per controller)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        commands: CommandStore,
        *,
        command_args: ArgsFactory,
        wake_outbox: Callable[[], None],
        tick_s: float = 1.0,
        coalesce_s: float = 0.05,
    ) -> None:
        self._sessions = sessions
        self._commands = commands
        self._command_args = command_args
        self._wake_outbox = wake_outbox
        self._tick_s = tick_s
        self._coalesce_s = coalesce_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._progress: dict[str, str] = {}
        self._active: set[str] = set()
        #: ``{"rollout": id}`` whenever a rollout's view changes (long-polls wait on it).
        self.feed = Feed()

    # -- operator actions ---------------------------------------------------------------------

    async def create(
        self,
        *,
        devices: Sequence[str],
        action: str,
        args: dict[str, Any],
        target: str,
        rate_per_min: float,
        abort_above_pct: float,
        requested_by: str,
        expires_s: float,
        timeout_s: float,
    ) -> Rollout:
        if not devices:
            raise ControllerError("a rollout needs at least one device")
        if not 0 < rate_per_min <= 6000:
            raise ControllerError("--rate must be between 0 and 6000 devices per minute", status=422)
        if not 0 <= abort_above_pct <= 100:
            raise ControllerError("--abort-above is a percentage between 0 and 100", status=422)
        now = wire.now_ms()
        rollout = Rollout(
            id=wire.new_id(),
            action=action,
            args=args,
            target=target,
            devices=list(devices),
            state=RolloutState.RUNNING.value,
            rate_per_min=rate_per_min,
            abort_above_pct=abort_above_pct,
            failure_base=0,
            requested_by=requested_by,
            expires_s=expires_s,
            timeout_s=timeout_s,
            created_at=now,
            updated_at=now,
            next_start_at=now,
        )
        async with self._lock, self._sessions.begin() as s:
            s.add(rollout)
        log.info("rollout %s: %s on %d devices at %g/min", rollout.id, action, len(devices), rate_per_min)
        self._wake.set()
        return rollout

    async def resume(self, rollout_id: str, *, abort_above_pct: float | None = None) -> Rollout:
        async with self._lock, self._sessions.begin() as s:
            rollout = await s.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            if (RolloutState(rollout.state), RolloutState.RUNNING) not in TRANSITIONS:
                raise ControllerError(
                    f"rollout {rollout_id} is {rollout.state}: only an aborted rollout can be resumed",
                    status=409,
                )
            if abort_above_pct is not None:
                if not 0 <= abort_above_pct <= 100:
                    raise ControllerError("--abort-above is a percentage between 0 and 100", status=422)
                rollout.abort_above_pct = abort_above_pct
            latest = await self._latest(s, rollout.id)
            failed = sum(1 for c in latest.values() if C(c.state) in FAILURES)
            now = wire.now_ms()
            rollout.failure_base = failed
            rollout.state = RolloutState.RUNNING.value
            rollout.finished_at = None
            rollout.next_start_at = now
            rollout.updated_at = now
            rollout.detail = f"resumed with {failed} earlier failure(s) set aside"
        self._wake.set()
        return rollout

    async def get(self, rollout_id: str) -> Rollout:
        async with self._sessions() as s:
            rollout = await s.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            return rollout

    async def list(self, limit: int = 50) -> Sequence[Rollout]:
        async with self._sessions() as s:
            q = select(Rollout).order_by(Rollout.created_at.desc()).limit(max(1, min(limit, 1000)))
            return (await s.scalars(q)).all()

    async def view(self, rollout_id: str) -> dict[str, Any]:
        async with self._sessions() as s:
            rollout = await s.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            latest = await self._latest(s, rollout.id)
            rows = await s.execute(
                select(Device.name, Device.agent_version).where(Device.name.in_(rollout.devices))
            )
            versions: dict[str, str | None] = dict(rows.all())
        return rollout_view(rollout, latest, versions)

    async def wait(self, rollout_id: str, *, known: str | None, timeout: float) -> dict[str, Any]:
        """Long-poll: the view once its progress differs from ``known`` (or at the timeout)."""
        return await self.feed.wait_until(
            lambda: self.view(rollout_id),
            lambda v: v["progress"] != known,
            key="rollout",
            record_id=rollout_id,
            timeout=timeout,
        )

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Advance every rollout: on a command's change, on a new or resumed rollout, and on time."""
        async with self._commands.feed.subscribe() as changes:
            listener = asyncio.create_task(self._listen(changes), name="rollouts-listen")
            try:
                while True:
                    try:
                        delay = await self.step(wire.now_ms())
                    except OperationalError as exc:  # a busy database: try again on the next tick
                        log.warning("rollouts: %s; retrying", exc)
                        delay = self._tick_s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
                        # a burst of command changes (a whole fleet reporting) makes one pass
                        await asyncio.sleep(min(self._coalesce_s, delay))
                    self._wake.clear()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, changes: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            await changes.get()
            self._wake.set()

    async def step(self, now: int) -> float:
        """One pass over the active rollouts; the seconds until the next start is due (at most a tick)."""
        delay = self._tick_s
        async with self._lock:
            async with self._sessions() as s:
                in_flight = select(Command.rollout_id).where(
                    Command.rollout_id.is_not(None), Command.state.not_in(_TERMINAL)
                )
                active = set(
                    await s.scalars(
                        select(Rollout.id).where(
                            (Rollout.state == RolloutState.RUNNING.value) | Rollout.id.in_(in_flight)
                        )
                    )
                )
            # those active last time get one more pass: their last command's end is news too
            ids, self._active = sorted(active | self._active), active
            for rollout_id in ids:
                due = await self._advance(rollout_id, now)
                if due is not None:
                    delay = min(delay, max(0.0, (due - now) / 1000))
        return delay

    async def _advance(self, rollout_id: str, now: int) -> int | None:
        """Abort, start the next device, or complete; publish a change. The next start time, if any.

        The decision is stored first and the command created after: if the controller stops in
        between, the device is still pending (it has no command) and is started on the next pass.
        """
        start: str | None = None
        cancel: list[str] = []
        due: int | None = None
        async with self._sessions.begin() as s:
            rollout = await s.get(Rollout, rollout_id)
            if rollout is None:
                return None
            latest = await self._latest(s, rollout.id)
            if rollout.state == RolloutState.RUNNING:
                total = len(rollout.devices)
                failed = sorted(d for d, c in latest.items() if C(c.state) in FAILURES)
                counted = len(failed) - rollout.failure_base
                pending = [
                    d for d in rollout.devices if d not in latest or latest[d].state == C.CANCELLED.value
                ]
                if counted > failures_allowed(total, rollout.abort_above_pct):
                    rollout.state = RolloutState.ABORTED.value
                    # not before the failures it counts: ``now`` was read before the last one landed
                    ended = max([now, *(latest[d].finished_at or now for d in failed)])
                    rollout.finished_at = rollout.updated_at = ended
                    rollout.next_start_at = None
                    rollout.detail = (
                        f"aborted: {counted} of {total} devices failed ({100 * counted / total:.1f} %,"
                        f" over the {rollout.abort_above_pct:g} % threshold): {', '.join(failed)};"
                        f" {len(pending)} not started"
                    )
                    cancel = [c.id for c in latest.values() if c.state == C.QUEUED.value]
                    log.warning("rollout %s %s", rollout.id, rollout.detail)
                elif pending and (rollout.next_start_at or 0) <= now:
                    interval = int(60_000 / rollout.rate_per_min)
                    last = rollout.next_start_at or now
                    rollout.next_start_at = (last if now - last < interval else now) + interval
                    rollout.updated_at = now
                    start = pending[0]
                    due = rollout.next_start_at if len(pending) > 1 else None
                elif pending:
                    due = rollout.next_start_at
                elif all(C(c.state).terminal for c in latest.values()):
                    counts = Counter(device_state(rollout, latest.get(d)).value for d in rollout.devices)
                    rollout.state = RolloutState.COMPLETED.value
                    rollout.finished_at = rollout.updated_at = now
                    rollout.next_start_at = None
                    rollout.detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                    log.info("rollout %s completed: %s", rollout.id, rollout.detail)
        for command_id in cancel:
            await self._commands.transition(
                command_id,
                C.CANCELLED,
                detail="rollout aborted before it was sent",
                source="controller",
                only_from=frozenset({C.QUEUED}),
            )
        if start is not None:
            await self._start(rollout, start, now)
            self._wake_outbox()
        states = Counter(c.state for c in latest.values())
        progress = f"{rollout.state}:{rollout.updated_at}:{sorted(states.items())}"
        if self._progress.get(rollout_id) != progress:
            self._progress[rollout_id] = progress
            self.feed.publish({"rollout": rollout_id})
        return due

    async def _start(self, rollout: Rollout, device: str, now: int) -> Command:
        until = now + int((rollout.expires_s + rollout.timeout_s + 60) * 1000)
        [cmd] = await self._commands.create(
            [device],
            rollout.action,
            await asyncio.to_thread(self._command_args, dict(rollout.args), until),
            requested_by=rollout.requested_by,
            expires_s=rollout.expires_s,
            timeout_s=rollout.timeout_s,
            rollout_id=rollout.id,
        )
        log.info("rollout %s: started %s on %s (command %s)", rollout.id, rollout.action, device, cmd.id)
        return cmd

    @staticmethod
    async def _latest(s: AsyncSession, rollout_id: str) -> dict[str, Command]:
        """Each device's newest command in the rollout.

        A device gets another command only after a resume, and only if its last one was cancelled:
        so a command that was not cancelled is the newest (even when both carry the same time).
        """
        rows = await s.scalars(select(Command).where(Command.rollout_id == rollout_id))
        ordered = sorted(rows, key=lambda c: (c.state != C.CANCELLED.value, c.created_at))
        return {c.device_name: c for c in ordered}


def rollout_view(
    rollout: Rollout, latest: dict[str, Command], versions: dict[str, str | None]
) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    for name in rollout.devices:
        cmd = latest.get(name)
        state = device_state(rollout, cmd)
        result = (cmd.result or {}) if cmd is not None else {}
        devices.append(
            {
                "device": name,
                "state": state.value,
                "command": None if cmd is None or state is DeviceState.SKIPPED else cmd.id,
                "old_version": result.get("old_version") or versions.get(name),
                "new_version": result.get("new_version"),
                "attempted_version": result.get("attempted_version"),
                "detail": None if cmd is None else cmd.detail,
            }
        )
    counts = Counter(d["state"] for d in devices)
    in_flight = counts[DeviceState.RUNNING.value]
    done = rollout.state != RolloutState.RUNNING and in_flight == 0
    summary = {s.value: counts[s.value] for s in DeviceState}
    return {
        "id": rollout.id,
        "state": rollout.state,
        "action": rollout.action,
        "target": rollout.target,
        "args": rollout.args,
        "rate_per_min": rollout.rate_per_min,
        "abort_above_pct": rollout.abort_above_pct,
        "failures_allowed": failures_allowed(len(rollout.devices), rollout.abort_above_pct),
        "requested_by": rollout.requested_by,
        "created_at": rollout.created_at,
        "updated_at": rollout.updated_at,
        "finished_at": rollout.finished_at,
        "detail": rollout.detail,
        "total": len(rollout.devices),
        "counts": summary,
        "done": done,
        "devices": devices,
        "progress": f"{rollout.state}:{rollout.updated_at}:"
        + ",".join(f"{k}={v}" for k, v in summary.items()),
    }
