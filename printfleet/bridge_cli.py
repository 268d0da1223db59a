"""``printfleet-bridge``: what runs and is run on a phone bridge (``run``, ``enroll``).

The same commands are part of ``printfleet bridge ...`` in the full command line
(:mod:`printfleet.cli_bridges` adds this group's commands to its own). Imports only the kernel,
``phone_bridge``, typer/rich and httpx (what ``printfleet[bridge]`` installs); the simulated radio
(``--ble-backend bumble:SPEC``) needs ``printfleet[ble-sim]`` too.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from kernel.errors import PrintfleetError
from printfleet.cli_common import (
    OPTIONS,
    CliGroup,
    fail,
    out,
    refuse_existing,
    run_app,
    run_until_signal,
    setup_logging,
)
from printfleet.enroll import redeem_enrollment

bridge_host_app = typer.Typer(
    cls=CliGroup,
    no_args_is_help=True,
    add_completion=False,
    help="The phone bridge: print over Bluetooth LE when a printer's cloud path fails.",
)


def write_bridge_config(path: Path, config: dict[str, Any]) -> None:
    """Write a bridge config the controller issued (secret file, mode 0600)."""
    from phone_bridge.config import write_bridge_config as write

    try:
        write(path, config)
    except (OSError, PrintfleetError) as exc:
        fail(f"could not write {path}: {exc}")


@bridge_host_app.command("enroll")
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
    refuse_existing(out_path)
    result = redeem_enrollment(server, enrollment_token, "bridge")
    write_bridge_config(out_path, result["bridge_config"])
    out.print(f"enrolled as bridge {result['bridge']}; config written to {out_path}")
    out.print(f"start it: printfleet bridge run --config {out_path}")


@bridge_host_app.command("run")
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the phone bridge: take the jobs the controller routes here and print them over BLE."""
    from phone_bridge.bridge import Outcome, run_bridge
    from phone_bridge.config import load_bridge_config

    OPTIONS.verbose = OPTIONS.verbose or verbose
    setup_logging(logging.INFO)

    def show(outcome: Outcome) -> None:
        out.print(f"job {outcome.job_id} {outcome.state}: {outcome.detail}", markup=False)

    cfg = load_bridge_config(config)
    asyncio.run(run_until_signal(run_bridge(cfg, backend=ble_backend, on_outcome=show)))


def main(args: list[str] | None = None) -> None:
    """``printfleet-bridge``."""
    run_app(bridge_host_app, prog_name="printfleet-bridge", args=args)
