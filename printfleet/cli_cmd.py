"""``printfleet cmd ...``: remote maintenance commands, their records and (from
:mod:`printfleet.cli_update`) agent updates and rollouts."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from printfleet.cli_api import api, call
from printfleet.cli_common import EXIT_FAILED, JsonOpt, emit_json, fail, out, ts
from printfleet.cli_update import register_update_commands, wait_command

cmd_app = typer.Typer(
    no_args_is_help=True, help="Remote maintenance commands (printfleet cmd ACTION TARGET)."
)

TargetArg = Annotated[str | None, typer.Argument(help="A device name or tag:NAME (or --all).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every device.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the outcome; exit 0 only if it succeeded.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="How long it may run once started (s).")]
ExpiresOpt = Annotated[float, typer.Option("--expires", help="How long it may wait for delivery (s).")]


def _run_cmd(
    action: str,
    target: str | None,
    all_devices: bool,
    args: dict[str, Any],
    *,
    wait: bool,
    as_json: bool,
    timeout: float,
    expires: float,
) -> None:
    if all_devices == (target is not None):
        fail("give a TARGET (device name or tag:NAME) or --all", 2)
    body = {
        "action": action,
        "target": target,
        "all": all_devices,
        "args": args,
        "timeout": timeout,
        "expires": expires,
    }
    with api() as client:
        created = client.request("POST", "/v1/commands", json=body)["commands"]
        limit = expires + timeout + 10
        results = [wait_command(client, c, limit) if wait else c for c in created]
    if as_json:
        emit_json(results[0] if len(results) == 1 and target and not target.startswith("tag:") else results)
    else:
        for cmd in results:
            line = f"{cmd['device']}: command {cmd['id']} {cmd['state']}"
            if cmd.get("detail"):
                line += f" ({cmd['detail']})"
            out.print(line, markup=False)
            result = cmd.get("result") or {}
            if wait and action == "logs" and "lines" in result:
                for text in result["lines"]:
                    out.print(text, markup=False)
            elif wait and result:
                shown = {k: v for k, v in result.items() if k != "agent_audit"}
                out.print(json.dumps(shown, indent=2, sort_keys=True), markup=False)
    if wait and any(c["state"] != "succeeded" for c in results):
        raise typer.Exit(EXIT_FAILED)


def _simple_cmd(action: str, doc: str) -> None:
    def command(
        target: TargetArg = None,
        all_devices: AllOpt = False,
        wait: WaitOpt = False,
        as_json: JsonOpt = False,
        timeout: TimeoutOpt = 60.0,
        expires: ExpiresOpt = 3600.0,
    ) -> None:
        _run_cmd(
            action, target, all_devices, {}, wait=wait, as_json=as_json, timeout=timeout, expires=expires
        )

    command.__doc__ = doc
    cmd_app.command(action)(command)


_simple_cmd("ping", "Round trip through the agent.")
_simple_cmd("status", "Agent version, uptime, boot id, disk, printer status.")
_simple_cmd("restart-agent", "Restart the agent process; done when it is back (new boot id and session).")
_simple_cmd("reboot", "Run the host's configured reboot command (agent config: maintenance.reboot_command).")
_simple_cmd("shutdown", "Run the configured shutdown command (agent config: maintenance.shutdown_command).")


@cmd_app.command("logs")
def cmd_logs(
    target: TargetArg = None,
    all_devices: AllOpt = False,
    lines: Annotated[int, typer.Option(min=1, max=5000, help="The last N lines.")] = 100,
    since: Annotated[float | None, typer.Option(help="Lines since this many seconds ago.")] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """The agent's own log, returned to the CLI."""
    args: dict[str, Any] = {"lines": lines}
    if since is not None:
        args["since"] = time.time() - since
    _run_cmd("logs", target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires)


@cmd_app.command("config-get")
def cmd_config_get(
    target: TargetArg = None,
    key: Annotated[str | None, typer.Argument(help="One setting (all when left out).")] = None,
    all_devices: AllOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """Read the agent's live settings."""
    args = {} if key is None else {"key": key}
    _run_cmd(
        "config-get", target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires
    )


@cmd_app.command("config-set")
def cmd_config_set(
    target: TargetArg = None,
    assignments: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE ...")] = None,
    all_devices: AllOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """Change settings live (validated; all or nothing)."""
    values: dict[str, str] = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"expected KEY=VALUE, got {item!r}", 2)
        values[key] = value
    if not values:
        fail("give at least one KEY=VALUE", 2)
    _run_cmd(
        "config-set",
        target,
        all_devices,
        {"values": values},
        wait=wait,
        as_json=as_json,
        timeout=timeout,
        expires=expires,
    )


def _printer_cmd(action: str, doc: str) -> None:
    def command(
        target: TargetArg = None,
        all_devices: AllOpt = False,
        printer: Annotated[str | None, typer.Option(help="Which printer, when the host has several.")] = None,
        wait: WaitOpt = False,
        as_json: JsonOpt = False,
        timeout: TimeoutOpt = 60.0,
        expires: ExpiresOpt = 3600.0,
    ) -> None:
        args = {} if printer is None else {"printer": printer}
        _run_cmd(
            action, target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires
        )

    command.__doc__ = doc
    cmd_app.command(action)(command)


_printer_cmd("printer-status", "The printer's status as read from it.")
_printer_cmd("printer-selftest", "Make the printer print its self-test page (between jobs).")
_printer_cmd("open-drawer", "Kick the cash drawer (pin 2) between jobs.")


@cmd_app.command("list")
def cmd_list(
    device: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=5000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Maintenance command records, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if device:
        params["device"] = device
    cmds = call("GET", "/v1/commands", params=params)
    if as_json:
        emit_json(cmds)
        return
    table = Table("command", "device", "action", "state", "requested by", "created", "detail")
    for c in cmds:
        table.add_row(
            c["id"],
            c["device"],
            c["action"],
            c["state"],
            c["requested_by"],
            ts(c["created_at"]),
            c["detail"] or "",
        )
    out.print(table)


@cmd_app.command("show")
def cmd_show(command_id: str, as_json: JsonOpt = False) -> None:
    """One command record with its history and result."""
    cmd = call("GET", f"/v1/commands/{command_id}")
    if as_json:
        emit_json(cmd)
        return
    out.print(f"command {cmd['id']}: {cmd['action']} on {cmd['device']} -> {cmd['state']}", markup=False)
    table = Table("time", "state", "source", "detail")
    for e in cmd["events"]:
        table.add_row(ts(e["at"]), e["state"], e["source"], e["detail"] or "")
    out.print(table)
    if cmd["result"]:
        out.print(json.dumps(cmd["result"], indent=2, sort_keys=True), markup=False)


register_update_commands(cmd_app)  # cmd update, cmd rollout list|show|resume
