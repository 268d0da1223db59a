"""Maintenance commands on the agent: each command id runs at most once, never during a print.

A command is journaled (``delivered``) before it is answered, marked ``in_progress`` durably before
it starts, and its outcome is recorded with a line in the agent's append-only audit log. A
redelivered command is answered from the journal. A command that restarts the agent completes when
the agent is back (new boot id and session number).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_agent.errors import CommandRejected, HostCommandFailed, UpdateFailed, UpdateRefused
from device_agent.journal import Journal
from device_agent.update import Updater
from kernel import wire

log = logging.getLogger(__name__)
C = wire.CommandState

#: Actions that touch the printer or the host: they wait until no job is printing.
RESTARTS = frozenset({"restart-agent", "reboot", "shutdown"})
DISRUPTIVE = frozenset(
    {"printer-selftest", "open-drawer", "restart-agent", "reboot", "shutdown", "update", "config-set"}
)
ESC_POS_SELFTEST = b"\x1d\x28\x41\x02\x00\x00\x02"  # GS ( A: execute test print
ESC_POS_DRAWER = {2: b"\x1b\x70\x00\x19\xfa", 5: b"\x1b\x70\x01\x19\xfa"}  # ESC p m t1 t2


class AgentHooks(Protocol):
    """What the command executor needs from the agent."""

    boot_id: str
    #: The printfleet version this agent runs (what its birth announces).
    version: str

    @property
    def session(self) -> int: ...

    def ctl_now(self) -> int: ...

    def local_ms(self) -> int: ...

    def printing(self) -> bool: ...

    def printer_health(self) -> dict[str, wire.PrinterHealth]: ...

    async def raw_to_printer(self, printer: str | None, data: bytes) -> str: ...

    async def queue_report(self, report: wire.CommandReport) -> None: ...

    def settings(self) -> dict[str, Any]: ...

    async def apply_setting(self, key: str, value: Any) -> None: ...

    def request_restart(self) -> None: ...


#: The loggers whose records :class:`LogBuffer` keeps (their children included).
SOURCES = ("device_agent", "kernel")


class LogBuffer(logging.Handler):
    """The agent's own recent log lines, kept in memory for `printfleet cmd logs`."""

    def __init__(self, capacity: int = 5000) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.created, self.format(record)))
        except Exception:  # a log handler must never raise into the code that logs
            self.handleError(record)

    def attach(self) -> None:
        """Keep the records of the agent's and the kernel's loggers (:data:`SOURCES`) from now on.

        Never the root logger: where log lines go, and at which level, is the entry point's choice.
        """
        for name in SOURCES:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in SOURCES:
            logging.getLogger(name).removeHandler(self)

    def tail(self, lines: int | None = None, since: float | None = None) -> list[str]:
        items = [text for at, text in self.lines if since is None or at >= since]
        return items[-lines:] if lines else items


@dataclass(kw_only=True)
class HostCommands:
    """System commands for reboot and shutdown: unset (refused) unless configured."""

    reboot: str | None = None
    shutdown: str | None = None


@dataclass(kw_only=True)
class Executor:
    journal: Journal
    agent: AgentHooks
    logs: LogBuffer
    host: HostCommands = field(default_factory=HostCommands)
    #: Runs `update` (none: the action is refused).
    updates: Updater | None = None
    _queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    # -- intake ----------------------------------------------------------------------------

    async def on_command(self, cmd: wire.CommandRun) -> None:
        now = self.agent.local_ms()
        record, is_new = await self.journal.accept_command(cmd, now)
        if not is_new:  # a redelivery: answer from the journal, never run twice
            await self.agent.queue_report(
                wire.CommandReport(
                    report_id=wire.new_id(),
                    command_id=cmd.command_id,
                    state=record["state"],
                    detail=record["detail"],
                    result=record["result"] or {},
                    at=self.agent.ctl_now(),
                )
            )
            return
        if cmd.action not in wire.COMMAND_ACTIONS:
            await self._report(cmd.command_id, C.REJECTED, f"unknown action {cmd.action!r}")
            return
        if cmd.expires_at is not None and self.agent.ctl_now() > cmd.expires_at:
            await self._report(cmd.command_id, C.REJECTED, "expired before it could start")
            return
        await self._report(cmd.command_id, C.DELIVERED, None)
        self._queue.put_nowait(cmd.command_id)

    async def resume_after_restart(self) -> None:
        """At start: commands cut short by the stop fail, except a restart we asked for (settled
        once connected, with the new session number); delivered ones run now."""
        for rec in await self.journal.commands_in([C.IN_PROGRESS]):
            if rec["action"] == "update":
                continue  # settled once connected: the new version confirms, or it was rolled back
            if rec["action"] not in RESTARTS or rec["boot_id"] == self.agent.boot_id:
                await self._report(rec["command_id"], C.FAILED, "the agent stopped while running it")
        for rec in await self.journal.commands_in([C.DELIVERED]):
            self._queue.put_nowait(rec["command_id"])

    async def settle_restarts(self) -> None:
        """Once connected again: a restart that happened is confirmed by a new boot id and session."""
        for rec in await self.journal.commands_in([C.IN_PROGRESS]):
            if rec["action"] == "update" and rec["boot_id"] != self.agent.boot_id:
                await self._settle_update(rec["command_id"])
            if rec["action"] in RESTARTS and rec["boot_id"] != self.agent.boot_id:
                result = {
                    "boot_id": self.agent.boot_id,
                    "previous_boot_id": rec["boot_id"],
                    "session": self.agent.session,
                    "host_boot_id": _host_boot_id(),
                }
                await self._report(rec["command_id"], C.SUCCEEDED, "the agent is back", result)

    # -- execution -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            command_id = await self._queue.get()
            rec = await self.journal.command(command_id)
            if rec is None or rec["state"] is not C.DELIVERED:
                continue
            if rec["action"] in DISRUPTIVE:
                announced = False
                while self.agent.printing():  # never interrupt a print: "busy, later"
                    if not announced:
                        await self._report(command_id, C.DELIVERED, "busy printing, later")
                        announced = True
                    await asyncio.sleep(0.2)  # polling the workers' busy flag
            if rec["expires_at"] is not None and self.agent.ctl_now() > rec["expires_at"]:
                await self._report(command_id, C.REJECTED, "expired before it could start")
                continue
            await self._execute(rec)

    async def _execute(self, rec: dict[str, Any]) -> None:
        command_id, action, args = rec["command_id"], rec["action"], rec["args"]
        await self._report(command_id, C.IN_PROGRESS, None, boot_id=self.agent.boot_id)
        try:
            result = await asyncio.wait_for(
                self._dispatch(action, args, command_id), timeout=rec["timeout_s"]
            )
        except (CommandRejected, UpdateRefused) as exc:
            await self._report(command_id, C.REJECTED, str(exc))
        except UpdateFailed as exc:
            await self._report(command_id, C.FAILED, str(exc)[:500])
        except TimeoutError:
            await self._report(command_id, C.TIMED_OUT, f"did not finish within {rec['timeout_s']} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing command is reported, the agent goes on
            log.warning("command %s (%s) failed: %s", command_id, action, exc)
            await self._report(command_id, C.FAILED, f"{type(exc).__name__}: {exc}"[:500])
        else:
            if result is _PENDING_RESTART:
                return  # completed after the restart (resume_after_restart)
            await self._report(command_id, C.SUCCEEDED, None, result)

    async def _dispatch(self, action: str, args: dict[str, Any], command_id: str) -> Any:
        match action:
            case "ping":
                return {"pong": True, "agent_time": self.agent.local_ms(), "ctl_time": self.agent.ctl_now()}
            case "status":
                return self._status()
            case "logs":
                lines = _int_arg(args, "lines", 100, 1, 5000)
                since = args.get("since")
                if since is not None and not isinstance(since, int | float):
                    raise CommandRejected("since must be a time in seconds since the epoch")
                return {"lines": self.logs.tail(lines if since is None else None, since)[-5000:]}
            case "config-get":
                key = args.get("key")
                settings = self.agent.settings()
                if key is None:
                    return {"settings": settings}
                if key not in settings:
                    raise CommandRejected(f"unknown setting {key!r}; settings: {', '.join(sorted(settings))}")
                return {"settings": {key: settings[key]}}
            case "config-set":
                return await self._config_set(args)
            case "printer-status":
                health = self.agent.printer_health()
                printer = args.get("printer")
                if printer is not None:
                    if printer not in health:
                        raise CommandRejected(f"no printer {printer!r} on this host")
                    health = {printer: health[printer]}
                return {"printers": {k: v.model_dump(mode="json") for k, v in health.items()}}
            case "printer-selftest":
                return {"printer": await self.agent.raw_to_printer(args.get("printer"), ESC_POS_SELFTEST)}
            case "open-drawer":
                pin = _int_arg(args, "pin", 2, 2, 5)
                if pin not in ESC_POS_DRAWER:
                    raise CommandRejected("pin must be 2 or 5")
                return {"printer": await self.agent.raw_to_printer(args.get("printer"), ESC_POS_DRAWER[pin])}
            case "restart-agent":
                self.agent.request_restart()
                return _PENDING_RESTART
            case "reboot" | "shutdown":
                command = self.host.reboot if action == "reboot" else self.host.shutdown
                if not command:
                    raise CommandRejected(
                        f"{action} is not configured on this host ([maintenance] {action}_command)"
                    )
                proc = await asyncio.create_subprocess_shell(
                    command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
                out, _ = await proc.communicate()
                if proc.returncode != 0:
                    raise HostCommandFailed(command, proc.returncode, out.decode(errors="replace")[-300:])
                await asyncio.Event().wait()  # the host goes down; confirmed by the next boot
                return _PENDING_RESTART
            case "update":
                if self.updates is None:
                    raise CommandRejected("updates are not set up on this agent")
                result = await self.updates.start(
                    args,
                    command_id=command_id,
                    running_version=self.agent.version,
                    now_ms=self.agent.local_ms(),
                )
                if result is not None:  # that version already runs: nothing to restart for
                    return result
                self.agent.request_restart()
                return _PENDING_RESTART  # settled after the restart (settle_restarts)
            case _:
                raise CommandRejected(f"unknown action {action!r}")

    def _status(self) -> dict[str, Any]:
        disk = shutil.disk_usage(self.journal.path.parent)
        return {
            "agent_version": self.agent.version,
            "boot_id": self.agent.boot_id,
            "host_boot_id": _host_boot_id(),
            "session": self.agent.session,
            "uptime_s": round(time.monotonic() - _STARTED, 1),
            "disk": {"total": disk.total, "free": disk.free},
            "printers": {k: v.model_dump(mode="json") for k, v in self.agent.printer_health().items()},
            "pid": os.getpid(),
        }

    async def _config_set(self, args: dict[str, Any]) -> dict[str, Any]:
        values = args.get("values")
        if not isinstance(values, dict) or not values:
            raise CommandRejected("config-set needs values: KEY=VALUE ...")
        current = self.agent.settings()
        unknown = [k for k in values if k not in current]
        if unknown:
            raise CommandRejected(
                f"unknown setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(current))}"
            )
        previous = {k: current[k] for k in values}
        applied: dict[str, Any] = {}
        try:
            for key, value in values.items():
                await self.agent.apply_setting(key, value)
                applied[key] = value
        except ValueError as exc:
            for key in applied:  # roll back what was already applied
                await self.agent.apply_setting(key, previous[key])
            raise CommandRejected(f"invalid value: {exc}") from exc
        return {"applied": applied, "previous": previous}

    async def _settle_update(self, command_id: str) -> None:
        if self.updates is None:
            await self._report(command_id, C.FAILED, "the agent stopped while running it")
            return
        settled = await self.updates.settle(
            command_id, running_version=self.agent.version, now_ms=self.agent.local_ms()
        )
        if settled is not None:
            await self._report(command_id, settled.state, settled.detail, settled.result)

    # -- reporting -------------------------------------------------------------------------

    async def _report(
        self,
        command_id: str,
        state: wire.CommandState,
        detail: str | None,
        result: dict[str, Any] | None = None,
        *,
        boot_id: str | None = None,
    ) -> None:
        report = await self.journal.command_transition(
            command_id,
            state,
            now=self.agent.local_ms(),
            ctl_now=self.agent.ctl_now(),
            detail=detail,
            result=_with_audit(result, await self.journal.audit_tail(5)) if state.terminal else result,
            boot_id=boot_id,
        )
        await self.agent.queue_report(report)


class _Pending:
    pass


_PENDING_RESTART = _Pending()
_STARTED = time.monotonic()


def _with_audit(result: dict[str, Any] | None, audit: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(result or {})
    out["agent_audit"] = audit
    return out


def _int_arg(args: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CommandRejected(f"{key} must be an integer between {low} and {high}")
    return value


def _host_boot_id() -> str | None:
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip()
    return None
