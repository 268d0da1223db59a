"""`printfleet bridge ...` and `printfleet printers set`: the BLE fallback from the command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernel.errors import PrintfleetError
from printfleet.cli import (
    _run_until_signal,
    _setup_logging,
    _ts,
    app,
    call,
    emit_json,
    fail,
    out,
    printers_app,
    redeem_enrollment,
)

bridge_app = typer.Typer(
    no_args_is_help=True, help="Phone bridges: print over Bluetooth LE when a printer's cloud path fails."
)
app.add_typer(bridge_app, name="bridge")


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
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


def _write_bridge_config(path: Path, config: dict[str, Any]) -> None:
    from phone_bridge.config import write_bridge_config

    write_bridge_config(path, config)


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
        out.print(
            f"registered bridge {name}; one-time enrolment token (expires {_ts(result['expires_at'])}):"
        )
        out.print(result["enrollment_token"], markup=False)
        out.print(
            f"on the phone: printfleet bridge enroll --server URL --enrollment-token TOKEN --out {name}.toml"
        )
        return
    target = out_path or Path(f"{name}.bridge.toml")
    if target.exists():
        fail(f"{target} already exists; choose another --out")
    result = call("POST", "/v1/bridges", json=body)
    try:
        _write_bridge_config(target, result["bridge_config"])
    except (OSError, PrintfleetError) as exc:
        call("DELETE", f"/v1/bridges/{name}")
        fail(f"could not write {target}: {exc}")
    where = ", ".join(near or []) or "no printer yet (printfleet bridge near)"
    out.print(f"registered bridge {name} near {where}; config written to {target}")
    out.print(f"on the phone: printfleet bridge run --config {target.name}")


@bridge_app.command("enroll")
def bridge_enroll(
    server: Annotated[str, typer.Option("--server", help="The controller's HTTP address.")],
    enrollment_token: Annotated[
        str, typer.Option("--enrollment-token", help="The one-time token from bridge register --enroll.")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the bridge config.")] = Path(
        "bridge.toml"
    ),
) -> None:
    """Obtain this bridge's own credentials with a one-time enrolment token and write its config."""
    if out_path.exists():
        fail(f"{out_path} already exists; choose another --out")
    result = redeem_enrollment(server, enrollment_token, "bridge")
    try:
        _write_bridge_config(out_path, result["bridge_config"])
    except (OSError, PrintfleetError) as exc:
        fail(f"could not write {out_path}: {exc}")
    out.print(f"enrolled as bridge {result['bridge']}; config written to {out_path}")
    out.print(f"start it: printfleet bridge run --config {out_path}")


@bridge_app.command("run")
def bridge_run(
    config: Annotated[Path, typer.Option("--config", help="The bridge.toml written by `bridge register`.")],
    ble_backend: Annotated[
        str | None,
        typer.Option(
            "--ble-backend",
            help="bleak (the platform's Bluetooth, default) or bumble:SPEC (simulated radio, e.g."
            " bumble:tcp-client:127.0.0.1:PORT).",
        ),
    ] = None,
) -> None:
    """Run the phone bridge: take the jobs the controller routes here and print them over BLE."""
    from phone_bridge.bridge import Outcome, run_bridge
    from phone_bridge.config import load_bridge_config

    _setup_logging(logging.INFO)

    def show(outcome: Outcome) -> None:
        out.print(f"job {outcome.job_id} {outcome.state}: {outcome.detail}", markup=False)

    try:
        cfg = load_bridge_config(config)
        asyncio.run(_run_until_signal(run_bridge(cfg, backend=ble_backend, on_outcome=show)))
    except PrintfleetError as exc:
        fail(str(exc))


@bridge_app.command("list")
def bridge_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered bridges, whether they are online, and the printers each is near."""
    rows = call("GET", "/v1/bridges")
    if as_json:
        emit_json(rows)
        return
    table = Table("bridge", "online", "near", "latency", "last seen")
    for b in rows:
        online = "yes" if b["online"] else ("disabled" if not b["enabled"] else "no")
        latency = "-" if b["latency_ms"] is None else f"{b['latency_ms']:.0f} ms"
        table.add_row(b["name"], online, ", ".join(b["near"]) or "-", latency, _ts(b["last_seen_at"]))
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
    call("POST", f"/v1/bridges/{name}/enable")
    out.print(f"bridge {name} enabled")


@bridge_app.command("rotate")
def bridge_rotate(
    name: str,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the new bridge config.")],
) -> None:
    """Issue new credentials for a bridge: the old ones stop working and its session is dropped."""
    if out_path.exists():
        fail(f"{out_path} already exists; choose another --out")
    result = call("POST", f"/v1/bridges/{name}/rotate")
    try:
        _write_bridge_config(out_path, result["bridge_config"])
    except (OSError, PrintfleetError) as exc:
        fail(f"could not write {out_path}: {exc}")
    out.print(f"new credentials for bridge {name} written to {out_path}; install it on the phone")


@bridge_app.command("remove")
def bridge_remove(name: str) -> None:
    call("DELETE", f"/v1/bridges/{name}")
    out.print(f"bridge {name} removed")
