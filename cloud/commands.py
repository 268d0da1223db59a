"""Maintenance commands: a stored record per command per device, written before anything is sent.

queued -> sent -> delivered -> in_progress -> succeeded | failed | rejected | timed_out, plus
cancelled (before it starts) and expired (never delivered in time). A late result still closes a
timed-out record; nothing else ever moves a record backwards. :data:`COMMAND_TRANSITIONS` lists the
allowed moves; every write of a command's state is a compare-and-set on the state read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from cloud.errors import ControllerError, NotFound
from cloud.feed import Feed
from cloud.models import Command, CommandEvent, Device
from kernel import wire

log = logging.getLogger(__name__)
C = wire.CommandState

_RANK: dict[wire.CommandState, int] = {
    C.QUEUED: 0,
    C.SENT: 1,
    C.DELIVERED: 2,
    C.IN_PROGRESS: 3,
    C.SUCCEEDED: 4,
    C.FAILED: 4,
    C.REJECTED: 4,
    C.TIMED_OUT: 4,
    C.CANCELLED: 4,
    C.EXPIRED: 4,
}
_TERMINAL = [s.value for s in wire.TERMINAL_COMMAND_STATES]


def _moves() -> frozenset[tuple[wire.CommandState, wire.CommandState]]:
    moves: set[tuple[wire.CommandState, wire.CommandState]] = set()
    for current in C:
        for new in C:
            if current == new:
                continue
            if current is C.TIMED_OUT:
                if new in (C.SUCCEEDED, C.FAILED, C.REJECTED):
                    moves.add((current, new))  # a late result still closes a timed-out record
            elif not current.terminal and _RANK[new] > _RANK[current]:
                moves.add((current, new))
    return frozenset(moves)


#: Every allowed (current, new) move of a command.
COMMAND_TRANSITIONS = _moves()


def command_allowed(current: wire.CommandState, new: wire.CommandState) -> bool:
    """Whether a command in ``current`` may move to ``new`` (a lookup in :data:`COMMAND_TRANSITIONS`)."""
    return (current, new) in COMMAND_TRANSITIONS


class CommandStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.feed = Feed()

    async def targets(self, target: str | None, *, all_devices: bool = False) -> list[str]:
        """Device names for a target: a name, ``tag:NAME``, or every device."""
        async with self._sessions() as s:
            devices = (await s.scalars(select(Device).order_by(Device.name))).all()
        if all_devices:
            names = [d.name for d in devices]
        elif target is None:
            raise ControllerError("give a device name, tag:NAME, or all")
        elif target.startswith("tag:"):
            tag = target[4:]
            names = [d.name for d in devices if tag in (d.tags or [])]
        else:
            names = [d.name for d in devices if d.name == target]
            if not names:
                raise NotFound(f"no device named {target!r}")
        if not names:
            raise NotFound(f"no device matches {target!r}")
        return names

    async def create(
        self,
        devices: Sequence[str],
        action: str,
        args: dict[str, Any],
        *,
        requested_by: str,
        expires_s: float,
        timeout_s: float,
        rollout_id: str | None = None,
        start_at: int | None = None,
    ) -> list[Command]:
        if action not in wire.COMMAND_ACTIONS:
            raise ControllerError(f"unknown action {action!r}; actions: {', '.join(wire.COMMAND_ACTIONS)}")
        if not 1 <= expires_s <= 30 * 24 * 3600:
            raise ControllerError("--expires must be between 1 second and 30 days")
        if not 0 < timeout_s <= 24 * 3600:
            raise ControllerError("--timeout must be between 0 and 24 hours")
        now = wire.now_ms()
        created: list[Command] = []
        async with self._sessions.begin() as s:
            for name in devices:
                cmd = Command(
                    id=wire.new_id(),
                    device_name=name,
                    action=action,
                    args=args,
                    state=C.QUEUED.value,
                    requested_by=requested_by,
                    created_at=now,
                    updated_at=now,
                    expires_at=now + int(expires_s * 1000),
                    timeout_s=timeout_s,
                    next_attempt_at=start_at or now,
                    rollout_id=rollout_id,
                )
                cmd.events.append(
                    CommandEvent(at=now, state=C.QUEUED.value, detail=None, source=requested_by)
                )
                s.add(cmd)
                created.append(cmd)
        for cmd in created:
            self._announce(cmd.id, cmd.device_name, C.QUEUED, None)
        return created

    async def transition(
        self,
        command_id: str,
        new: wire.CommandState,
        *,
        detail: str | None,
        source: str,
        result: dict[str, Any] | None = None,
        at: int | None = None,
        only_from: frozenset[wire.CommandState] | None = None,
    ) -> bool:
        """Move a command to ``new`` if allowed; record and publish the event. Idempotent.

        A compare-and-set on the state read: a concurrent move in between (a report racing the
        housekeeping's timeout) is never overwritten; the move is judged again on the new state.
        """
        for _ in range(8):
            async with self._sessions.begin() as s:
                cmd = await s.get(Command, command_id)
                if cmd is None:
                    return False
                current = C(cmd.state)
                if only_from is not None and current not in only_from:
                    return False
                if not command_allowed(current, new):
                    return False
                now = wire.now_ms()
                values: dict[str, Any] = {"state": new.value, "updated_at": now}
                if new is C.IN_PROGRESS and cmd.started_at is None:
                    values["started_at"] = at or now
                if _RANK[new] >= _RANK[C.DELIVERED]:
                    values["acked"] = True
                if new.terminal:
                    values.update(finished_at=now, next_attempt_at=None, detail=detail)
                if result is not None:
                    values["result"] = result
                if not await self._compare_and_set(s, command_id, current, values):
                    continue  # the state moved meanwhile: judge again
                s.add(
                    CommandEvent(
                        command_id=command_id, at=at or now, state=new.value, detail=detail, source=source
                    )
                )
                device = cmd.device_name
            self._announce(command_id, device, new, detail)
            return True
        log.warning("command %s: %s not applied, the state kept changing", command_id, new)
        return False

    async def mark_sent(self, command_id: str, *, attempt: int, next_attempt_at: int) -> bool:
        """Record a send before it goes out (the first one moves the command to ``sent``).

        ``False`` when the command finished meanwhile (cancelled at a rollout's abort, say): the
        caller must not send it. Recording first closes the window in which a command could be
        cancelled as "never sent" after it had gone out.
        """
        for _ in range(8):
            async with self._sessions.begin() as s:
                cmd = await s.get(Command, command_id)
                if cmd is None or C(cmd.state).terminal:
                    return False
                current = C(cmd.state)
                first = current is C.QUEUED
                now = wire.now_ms()
                values: dict[str, Any] = {"attempt": attempt, "next_attempt_at": next_attempt_at}
                if first:
                    values.update(state=C.SENT.value, updated_at=now)
                if not await self._compare_and_set(s, command_id, current, values):
                    continue
                if first:
                    s.add(
                        CommandEvent(command_id=command_id, at=now, state=C.SENT.value, source="controller")
                    )
                device = cmd.device_name
            if first:
                self._announce(command_id, device, C.SENT, None)
            return True
        return False

    @staticmethod
    async def _compare_and_set(
        s: AsyncSession, command_id: str, read: wire.CommandState, values: dict[str, Any]
    ) -> bool:
        done = await s.execute(
            update(Command)
            .where(Command.id == command_id, Command.state == read.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(done, "rowcount", 0) or 0):
            return True
        await s.rollback()
        return False

    def _announce(self, command_id: str, device: str, state: wire.CommandState, detail: str | None) -> None:
        self.feed.publish({"command": command_id, "device": device, "state": state.value, "detail": detail})

    async def get(self, command_id: str) -> Command:
        async with self._sessions() as s:
            cmd = await s.scalar(
                select(Command).where(Command.id == command_id).options(selectinload(Command.events))
            )
            if cmd is None:
                raise NotFound(f"no command {command_id!r}")
            return cmd

    async def list(
        self, *, device: str | None = None, rollout: str | None = None, limit: int = 100
    ) -> Sequence[Command]:
        async with self._sessions() as s:
            q = (
                select(Command)
                .order_by(Command.created_at.desc(), Command.id)
                .limit(max(1, min(limit, 5000)))
            )
            if device:
                q = q.where(Command.device_name == device)
            if rollout:
                q = q.where(Command.rollout_id == rollout)
            return (await s.scalars(q)).all()

    async def due(self, devices: Sequence[str], now: int, limit: int = 200) -> Sequence[Command]:
        """Unacknowledged commands for online devices whose (re)send time has come."""
        if not devices:
            return []
        async with self._sessions() as s:
            q = (
                select(Command)
                .where(
                    Command.device_name.in_(list(devices)),
                    Command.state.in_([C.QUEUED.value, C.SENT.value]),
                    Command.acked.is_(False),
                    or_(Command.next_attempt_at.is_(None), Command.next_attempt_at <= now),
                )
                .order_by(Command.created_at)
                .limit(limit)
            )
            return (await s.scalars(q)).all()

    async def resend_now(self, device: str) -> None:
        async with self._sessions.begin() as s:
            rows = await s.scalars(
                select(Command).where(
                    Command.device_name == device,
                    Command.state.in_([C.QUEUED.value, C.SENT.value]),
                    Command.acked.is_(False),
                    Command.rollout_id.is_(None),
                )
            )
            now = wire.now_ms()
            for cmd in rows:
                cmd.next_attempt_at = min(cmd.next_attempt_at or now, now)

    async def overdue(self, now: int, grace_ms: int) -> tuple[Sequence[Command], Sequence[Command]]:
        """(never delivered past their expiry, running past their timeout)."""
        async with self._sessions() as s:
            undelivered = (
                await s.scalars(
                    select(Command).where(
                        Command.state.in_([C.QUEUED.value, C.SENT.value]),
                        Command.acked.is_(False),
                        Command.expires_at < now - grace_ms,
                    )
                )
            ).all()
            running = (
                await s.scalars(
                    select(Command).where(
                        Command.state.in_([C.DELIVERED.value, C.IN_PROGRESS.value]),
                        and_(Command.started_at.is_not(None)),
                    )
                )
            ).all()
        late = [
            c
            for c in running
            if c.started_at is not None and now - c.started_at > c.timeout_s * 1000 + grace_ms
        ]
        return undelivered, late


def command_view(cmd: Command, *, events: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cmd.id,
        "device": cmd.device_name,
        "action": cmd.action,
        "args": cmd.args,
        "state": cmd.state,
        "requested_by": cmd.requested_by,
        "created_at": cmd.created_at,
        "updated_at": cmd.updated_at,
        "expires_at": cmd.expires_at,
        "timeout_s": cmd.timeout_s,
        "started_at": cmd.started_at,
        "finished_at": cmd.finished_at,
        "detail": cmd.detail,
        "result": cmd.result,
        "attempts": cmd.attempt,
        "rollout": cmd.rollout_id,
    }
    if events:
        out["events"] = [
            {"at": e.at, "state": e.state, "detail": e.detail, "source": e.source} for e in cmd.events
        ]
    return out
