"""``printfleet up``, ``printfleet demo`` and ``printfleet broker ...``: running the controller, the
demos and the embedded broker (the services themselves are in :mod:`printfleet.runner`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from printfleet.cli_common import EXIT_FAILED, OPTIONS, fail, out, setup_logging

broker_app = typer.Typer(no_args_is_help=True, help="The MQTT broker.")

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Controller data directory (default: PRINTFLEET_HOME or a per-user dir)."
    ),
]


def _data_dir() -> Path:
    from cloud.config import default_data_dir

    return OPTIONS.data_dir or default_data_dir()


def up(
    data_dir: DataDirOpt = None,
    mqtt_bind: Annotated[
        str, typer.Option(help="Embedded broker listen address HOST:PORT (port 0: any free).")
    ] = "127.0.0.1:1883",
    http_bind: Annotated[str, typer.Option(help="HTTP API listen address HOST:PORT.")] = "127.0.0.1:8080",
    advertise: Annotated[
        list[str] | None,
        typer.Option(help="Address written into agent configs (mqtt://... or http://...), repeatable."),
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Use an external broker mqtt://HOST:PORT instead of the embedded one.")
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Also run a demo agent attached to a simulated printer.")
    ] = False,
    tls: Annotated[
        bool, typer.Option("--tls", help="MQTT over TLS (a local CA is created when none is given).")
    ] = False,
    tls_ca: Annotated[
        Path | None, typer.Option("--tls-ca", help="Directory with ca.pem and ca.key (or server.pem/.key).")
    ] = None,
    mtls: Annotated[
        bool, typer.Option("--mtls", help="Also require client certificates (implies --tls).")
    ] = False,
    payload_retention_hours: Annotated[
        float,
        typer.Option(min=0.01, help="Purge the print data of finished jobs after this long (history stays)."),
    ] = 168.0,
    mosquitto_dir: Annotated[
        Path | None,
        typer.Option(help="With --broker: mosquitto's directory whose passwd/acl files are kept in step."),
    ] = None,
    mosquitto_reload: Annotated[
        str | None,
        typer.Option(help="Command that makes mosquitto reload them (e.g. 'systemctl reload mosquitto')."),
    ] = None,
) -> None:
    """Run the controller, the HTTP API and (unless --broker) the embedded broker."""
    from cloud.config import ControllerConfig, DataDir, parse_hostport

    setup_logging(logging.INFO)
    root = data_dir or _data_dir()
    try:
        config = ControllerConfig(
            data_dir=DataDir(root=root),
            db_url=DataDir(root=root).db_url,
            mqtt_bind=parse_hostport(mqtt_bind),
            http_bind=parse_hostport(http_bind),
            external_broker=broker,
            advertise=tuple(advertise or ()),
            tls=tls or mtls or tls_ca is not None,
            tls_dir=tls_ca,
            mtls=mtls,
            mosquitto_dir=mosquitto_dir,
            mosquitto_reload=mosquitto_reload,
            payload_retention_s=payload_retention_hours * 3600,
        )
        from printfleet.runner import serve

        asyncio.run(serve(config, demo=demo, console=out))
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}")


def demo_cmd(
    degraded: Annotated[
        bool,
        typer.Option(
            help="Show the degraded path instead: the host goes offline and a phone bridge prints the"
            " receipt over Bluetooth LE (a virtual BLE printer on a simulated radio)."
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 60.0,
) -> None:
    """Print a sample receipt through the whole real path and show it; exit 0 only if it printed."""
    from printfleet.runner import run_degraded_demo, run_demo

    setup_logging(logging.WARNING)
    run = run_degraded_demo if degraded else run_demo
    ok = asyncio.run(run(console=out, timeout=timeout))
    raise typer.Exit(0 if ok else EXIT_FAILED)


@broker_app.command("run")
def broker_run(
    data_dir: DataDirOpt = None,
    mqtt_bind: Annotated[str, typer.Option(help="Listen address HOST:PORT.")] = "127.0.0.1:1883",
) -> None:
    """Run the embedded broker alone, with the registered credentials and ACLs."""
    from printfleet.runner import serve_broker

    setup_logging(logging.INFO)
    asyncio.run(serve_broker(data_dir or _data_dir(), mqtt_bind, console=out))


@broker_app.command("export")
def broker_export(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for mosquitto.conf, passwd and acl.")],
    fmt: Annotated[str, typer.Option("--format", help="Only 'mosquitto' for now.")] = "mosquitto",
    data_dir: DataDirOpt = None,
    listen: Annotated[
        str, typer.Option(help="Listener address written into mosquitto.conf.")
    ] = "127.0.0.1:1883",
) -> None:
    """Write broker configuration (password and ACL files) for every registered device."""
    from printfleet.runner import export_broker

    if fmt != "mosquitto":
        fail(f"unknown format {fmt!r}: only 'mosquitto' is supported", 2)
    files = asyncio.run(export_broker(data_dir or _data_dir(), out_dir, listen))
    out.print(f"wrote {files}")
