"""``printfleet bridge ...``: phone bridges as the operator manages them through the controller's API,
plus the commands run on the phone itself (``run``, ``enroll``: :mod:`printfleet.bridge_cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from printfleet.bridge_cli import bridge_host_app, write_bridge_config
from printfleet.cli_api import call
from printfleet.cli_common import CliError, JsonOpt, emit_json, out, refuse_existing, ts

bridge_app = typer.Typer(
    no_args_is_help=True, help="Phone bridges: print over Bluetooth LE when a printer's cloud path fails."
)
bridge_app.add_typer(bridge_host_app)  # `bridge enroll` and `bridge run`, the same as printfleet-bridge's


@bridge_app.command("register")
def bridge_register(
    name: str,
    near: Annotated[
        list[str] | None, typer.Option("--near", help="A printer this bridge can reach (repeat the option).")
    ] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Where to write the bridge config.")] = None,
    enroll: Annotated[
        bool, typer.Option("--enroll", help="Issue a one-time enrolment token instead of writing a config.")
    ] = False,
    enroll_ttl: Annotated[float, typer.Option(help="Enrolment token lifetime in seconds.")] = 86400.0,
) -> None:
    """Register a phone bridge near some printers and write its config (credentials inside)."""
    body: dict[str, Any] = {"name": name, "near": list(near or [])}
    if enroll:
        result = call("POST", "/v1/bridges", json={**body, "enroll": True, "enroll_ttl": enroll_ttl})
        out.print(f"registered bridge {name}; one-time enrolment token (expires {ts(result['expires_at'])}):")
        out.print(result["enrollment_token"], markup=False)
        out.print(
            f"on the phone: printfleet bridge enroll --server URL --enrollment-token TOKEN --out {name}.toml"
        )
        return
    target = out_path or Path(f"{name}.bridge.toml")
    refuse_existing(target)
    result = call("POST", "/v1/bridges", json=body)
    try:
        write_bridge_config(target, result["bridge_config"])
    except CliError:
        call("DELETE", f"/v1/bridges/{name}")  # nothing half-registered
        raise
    where = ", ".join(near or []) or "no printer yet (printfleet bridge near)"
    out.print(f"registered bridge {name} near {where}; config written to {target}")
    out.print(f"on the phone: printfleet bridge run --config {target.name}")


@bridge_app.command("list")
def bridge_list(as_json: JsonOpt = False) -> None:
    """Registered bridges, whether they are online, and the printers each is near."""
    rows = call("GET", "/v1/bridges")
    if as_json:
        emit_json(rows)
        return
    table = Table("bridge", "online", "near", "latency", "last seen")
    for b in rows:
        online = "yes" if b["online"] else ("disabled" if not b["enabled"] else "no")
        latency = "-" if b["latency_ms"] is None else f"{b['latency_ms']:.0f} ms"
        table.add_row(b["name"], online, ", ".join(b["near"]) or "-", latency, ts(b["last_seen_at"]))
    out.print(table)


@bridge_app.command("near")
def bridge_near(name: str, printers: list[str]) -> None:
    """Set the printers a bridge can reach (replaces the list)."""
    result = call("POST", f"/v1/bridges/{name}/near", json={"near": printers})
    out.print(f"bridge {name} near {', '.join(result['near']) or 'no printer'}", markup=False)


@bridge_app.command("disable")
def bridge_disable(name: str) -> None:
    """Cut a bridge off at once (its credentials stop working; its session is dropped)."""
    call("POST", f"/v1/bridges/{name}/disable")
    out.print(f"bridge {name} disabled")


@bridge_app.command("enable")
def bridge_enable(name: str) -> None:
    """Let a disabled bridge connect again."""
    call("POST", f"/v1/bridges/{name}/enable")
    out.print(f"bridge {name} enabled")


@bridge_app.command("rotate")
def bridge_rotate(
    name: str,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the new bridge config.")],
) -> None:
    """Issue new credentials for a bridge: the old ones stop working and its session is dropped."""
    refuse_existing(out_path)
    result = call("POST", f"/v1/bridges/{name}/rotate")
    write_bridge_config(out_path, result["bridge_config"])
    out.print(f"new credentials for bridge {name} written to {out_path}; install it on the phone")


@bridge_app.command("remove")
def bridge_remove(name: str) -> None:
    """Remove a bridge (its credentials stop working)."""
    call("DELETE", f"/v1/bridges/{name}")
    out.print(f"bridge {name} removed")
