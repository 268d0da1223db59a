"""``printfleet devices ...`` and ``printfleet printers ...``: printer hosts and their printers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from printfleet.agent_cli import write_agent_config
from printfleet.cli_api import call
from printfleet.cli_common import CliError, JsonOpt, emit_json, fail, out, refuse_existing, ts

devices_app = typer.Typer(no_args_is_help=True, help="Printer hosts (each runs a device agent).")
printers_app = typer.Typer(no_args_is_help=True, help="Printers, addressed fleet-wide by name.")


@devices_app.command("add")
def devices_add(
    name: str,
    serial: Annotated[
        str, typer.Option("--serial", help="Printer port: /dev/ttyUSB0, a pty, socket://HOST:PORT, loop://")
    ],
    baud: Annotated[int, typer.Option(help="Serial speed.")] = 19200,
    profile: Annotated[str, typer.Option(help="Printer profile (see docs/documents.md).")] = "generic-80",
    flow_control: Annotated[str, typer.Option(help="none, rtscts or xonxoff.")] = "none",
    out_path: Annotated[Path | None, typer.Option("--out", help="Where to write the agent config.")] = None,
    enroll: Annotated[
        bool, typer.Option("--enroll", help="Issue a one-time enrolment token instead of writing a config.")
    ] = False,
    enroll_ttl: Annotated[float, typer.Option(help="Enrolment token lifetime in seconds.")] = 86400.0,
) -> None:
    """Register a printer host with one printer (named like the host) and write its agent config."""
    body: dict[str, Any] = {
        "name": name,
        "serial_url": serial,
        "baud": baud,
        "profile": profile,
        "flow_control": flow_control,
    }
    if enroll:
        result = call("POST", "/v1/devices", json={**body, "enroll": True, "enroll_ttl": enroll_ttl})
        out.print(f"registered device {name}; one-time enrolment token (expires {ts(result['expires_at'])}):")
        out.print(result["enrollment_token"], markup=False)
        out.print(
            f"on the host: printfleet agent enroll --server URL --enrollment-token TOKEN --out {name}.toml"
        )
        return
    target = out_path or Path(f"{name}.agent.toml")
    refuse_existing(target)
    result = call("POST", "/v1/devices", json=body)
    try:
        write_agent_config(target, result["agent_config"])
    except CliError:
        call("DELETE", f"/v1/devices/{name}")  # nothing half-registered
        raise
    out.print(f"registered device {name} with printer {name}; agent config written to {target}")
    out.print(f"on the host: printfleet agent run --config {target.name}")


@devices_app.command("remove")
def devices_remove(name: str) -> None:
    """Remove a host and its printers (their unfinished jobs are cancelled)."""
    result = call("DELETE", f"/v1/devices/{name}")
    out.print(f"removed device {name} (printers: {', '.join(result['printers'])})")


@devices_app.command("disable")
def devices_disable(name: str) -> None:
    """Cut a device off now: session dropped, credentials refused, its queued work kept undelivered."""
    call("POST", f"/v1/devices/{name}/disable")
    out.print(f"device {name} disabled")


@devices_app.command("enable")
def devices_enable(name: str) -> None:
    """Let a disabled device connect again; its queued work is delivered."""
    call("POST", f"/v1/devices/{name}/enable")
    out.print(f"device {name} enabled")


@devices_app.command("rotate")
def devices_rotate(
    name: str,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the new agent config.")],
) -> None:
    """Issue new credentials for a device (the old ones stop working); queued work is kept."""
    refuse_existing(out_path)
    result = call("POST", f"/v1/devices/{name}/rotate")
    write_agent_config(out_path, result["agent_config"])
    out.print(
        f"new credentials for {name} written to {out_path}; install it on the host and restart the agent"
    )


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    """Devices with online state, last heartbeat, latency, and their printers' status."""
    devices = call("GET", "/v1/devices")
    if as_json:
        emit_json(devices)
        return
    table = Table("device", "state", "last heartbeat", "latency", "printers")
    for d in devices:
        state = "online" if d["online"] else f"offline ({d['offline_reason'] or 'never seen'})"
        age = d["last_heartbeat_age_s"]
        hb = "-" if age is None else f"{age:.1f} s ago"
        lat = "-" if d["latency_ms"] is None else f"{d['latency_ms']:.0f} ms"
        printers = "\n".join(f"{p['name']}: {p['status']}" for p in d["printers"])
        table.add_row(d["name"], state, hb, lat, printers)
    out.print(table)


@devices_app.command("tag")
def devices_tag(
    name: str, tags: Annotated[list[str] | None, typer.Argument(help="The device's tags.")] = None
) -> None:
    """Set a device's tags (used as cmd targets: tag:NAME)."""
    device = call("POST", f"/v1/devices/{name}/tags", json={"tags": tags or []})
    out.print(f"{name}: tags {', '.join(device['tags']) or '(none)'}")


@printers_app.command("add")
def printers_add(
    device: str,
    name: str,
    serial: Annotated[str, typer.Option("--serial", help="Printer port URL.")],
    baud: Annotated[int, typer.Option()] = 19200,
    profile: Annotated[str, typer.Option()] = "generic-80",
    flow_control: Annotated[str, typer.Option()] = "none",
) -> None:
    """Attach another printer to a host; a running agent picks it up without re-flashing."""
    body = {
        "device": device,
        "name": name,
        "serial_url": serial,
        "baud": baud,
        "profile": profile,
        "flow_control": flow_control,
    }
    call("POST", "/v1/printers", json=body)
    out.print(f"added printer {name} to {device}")


@printers_app.command("list")
def printers_list(as_json: JsonOpt = False) -> None:
    """Every printer with its host, port and status."""
    printers = call("GET", "/v1/printers")
    if as_json:
        emit_json(printers)
        return
    table = Table("printer", "device", "port", "profile", "status")
    for p in printers:
        table.add_row(p["name"], p["device"], p["serial_url"], p["profile"], p["status"])
    out.print(table)


@printers_app.command("clear")
def printers_clear(name: str, as_json: JsonOpt = False) -> None:
    """Cancel every job of a printer that has not started printing (jobs already printing finish)."""
    result = call("POST", f"/v1/printers/{name}/clear")
    if as_json:
        emit_json(result)
        return
    out.print(
        f"{name}: {result['cancelled']} job(s) cancelled, {result['requested']} cancel(s) sent to the agent",
        markup=False,
    )


@printers_app.command("remove")
def printers_remove(name: str) -> None:
    """Detach a printer (its unfinished jobs are cancelled)."""
    call("DELETE", f"/v1/printers/{name}")
    out.print(f"removed printer {name}")


@printers_app.command("set")
def printers_set(
    printer: str,
    ble_address: Annotated[
        str | None, typer.Option("--ble-address", help="The printer's BLE address (AA:BB:CC:DD:EE:FF).")
    ] = None,
    ble_name: Annotated[
        str | None,
        typer.Option("--ble-name", help="Its advertised name (found by name where addresses are hidden)."),
    ] = None,
    ble_profile: Annotated[
        str | None,
        typer.Option("--ble-profile", help="GATT profile to use (see docs/ble.md); default: detect."),
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="File with the printer's Ed25519 public key (base64).")
    ] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", help="required, preferred (default) or off.")
    ] = None,
    latency_threshold: Annotated[
        int | None,
        typer.Option("--latency-threshold", help="Round trip (ms) above which the path counts as degraded."),
    ] = None,
    unique_id: Annotated[
        str | None, typer.Option("--unique-id", help="The id the printer signs in the identity challenge.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a printer's BLE side and its latency threshold (only the options given change)."""
    body: dict[str, Any] = {}
    for key, value in (
        ("ble_address", ble_address),
        ("ble_name", ble_name),
        ("ble_profile", ble_profile),
        ("identity", identity),
        ("latency_threshold_ms", latency_threshold),
        ("unique_id", unique_id),
    ):
        if value is not None:
            body[key] = value
    if public_key is not None:
        try:
            body["public_key"] = public_key.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {public_key}: {exc}")
    if not body:
        fail("nothing to set: give at least one option (see --help)", 2)
    result = call("PATCH", f"/v1/printers/{printer}/ble", json=body)
    if as_json:
        emit_json(result)
        return
    ble = result["ble"]
    out.print(
        f"printer {result['name']}: ble address {ble['address'] or '-'}, name {ble['name'] or '-'},"
        f" profile {ble['profile'] or 'detect'}, identity {ble['identity']},"
        f" public key {'set' if ble['public_key'] else 'none'},"
        f" latency threshold {result['latency_threshold_ms'] or 'default'} ms",
        markup=False,
    )
