"""``printfleet-agent`` (and ``printfleet agent ...``): what runs and is run on a printer host.

``run`` runs the device agent; ``enroll`` redeems a one-time token for the host's config; ``status``
shows what the host's files say (device, controller, brokers, printers, installs, undelivered
reports); ``versions`` lists the installs kept by updates and picks one by hand.

Imports only the kernel, ``device_agent``, typer/rich and httpx (what ``printfleet[agent]``
installs): ``printfleet agent ...`` and ``python -m printfleet agent ...``, which the systemd units
and launchers of hosts in the field start, come straight here (:mod:`printfleet.entry`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernel import __version__
from kernel.errors import PrintfleetError
from printfleet.cli_common import (
    OPTIONS,
    CliGroup,
    JsonOpt,
    emit_json,
    fail,
    out,
    refuse_existing,
    run_app,
    run_until_signal,
    setup_logging,
    ts,
)
from printfleet.enroll import redeem_enrollment

agent_app = typer.Typer(
    cls=CliGroup,
    no_args_is_help=True,
    add_completion=False,
    help="The device agent that runs on a printer host.",
)

ConfigOpt = Annotated[Path, typer.Option("--config", help="The agent's config file (agent.toml).")]


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", help="The agent.toml written by `devices add`.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the device agent (graceful stop on SIGINT/SIGTERM)."""
    from device_agent import launcher
    from device_agent.agent import Agent
    from device_agent.config import load_config

    OPTIONS.verbose = OPTIONS.verbose or verbose
    setup_logging(logging.INFO)
    cfg = load_config(config)
    if launcher.should_supervise(cfg):  # an update was installed: run the chosen version, judge trials
        raise typer.Exit(asyncio.run(launcher.supervise(cfg, config)))
    agent = Agent(cfg)
    asyncio.run(run_until_signal(agent.run()))
    if agent.restart_requested:  # `printfleet cmd restart-agent`: come back as a new process
        sys.stdout.flush()
        sys.stderr.flush()
        if launcher.supervised_child():  # the launcher starts the chosen version again
            raise typer.Exit(launcher.RESTART_EXIT)
        os.execv(
            sys.executable, [sys.executable, "-m", "printfleet", "agent", "run", "--config", str(config)]
        )


def write_agent_config(path: Path, agent_config: dict[str, Any]) -> None:
    """Write an agent config the controller issued (secret file, mode 0600)."""
    from device_agent.config import write_config

    try:
        write_config(path, dict(agent_config))
    except (OSError, PrintfleetError) as exc:
        fail(f"could not write {path}: {exc}")


@agent_app.command("enroll")
def agent_enroll(
    server: Annotated[str, typer.Option("--server", help="The controller's HTTP address.")],
    enrollment_token: Annotated[
        str, typer.Option("--enrollment-token", help="The one-time token from devices add --enroll.")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the agent config.")] = Path(
        "agent.toml"
    ),
) -> None:
    """Obtain this host's own credentials with a one-time enrolment token and write the agent config."""
    refuse_existing(out_path)
    result = redeem_enrollment(server, enrollment_token, "device")
    write_agent_config(out_path, result["agent_config"])
    out.print(f"enrolled as device {result['device']}; config written to {out_path}")
    out.print(f"start the agent: printfleet agent run --config {out_path}")


def _status_facts(config: Path) -> dict[str, Any]:
    from device_agent.config import load_config
    from device_agent.journal import Journal
    from device_agent.update import versions_dir
    from device_agent.versions import VersionStore

    cfg = load_config(config)
    versions = VersionStore(versions_dir(cfg.state_dir)).describe(__version__)
    pending: int | None = None
    if cfg.journal_path.exists():

        async def count() -> int:
            journal = Journal(cfg.journal_path)
            await journal.open()
            try:
                return await journal.pending_report_count()
            finally:
                await journal.close()

        pending = asyncio.run(count())
    return {
        "device": cfg.device,
        "controller": cfg.controller_http,
        "brokers": [str(b) for b in cfg.brokers],
        "tls": cfg.tls is not None,
        "printers": [p.name for p in cfg.printers],
        "state_dir": str(cfg.state_dir),
        "version": __version__,
        "current_install": versions["current"],
        "trial": versions["trial"],
        "last_outcome": versions["outcomes"][-1] if versions["outcomes"] else None,
        "undelivered_reports": pending,
    }


@agent_app.command("status")
def agent_status(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """What this host's files say: device, controller, brokers, printers, installs, undelivered reports."""
    facts = _status_facts(config)
    if as_json:
        emit_json(facts)
        return
    trial, pending = facts["trial"], facts["undelivered_reports"]
    rows = [
        ("device", facts["device"]),
        ("controller", facts["controller"]),
        ("brokers", ", ".join(facts["brokers"]) + (" (TLS)" if facts["tls"] else "")),
        ("printers", ", ".join(facts["printers"]) or "(from the controller)"),
        ("state dir", facts["state_dir"]),
        ("this install", f"printfleet {facts['version']}"),
        ("selected", facts["current_install"] or "the base environment"),
        ("on trial", "-" if trial is None else f"{trial['version']} (command {trial['command_id']})"),
        ("undelivered reports", "-" if pending is None else pending),
    ]
    last = facts["last_outcome"]
    if last is not None:
        verdict = "confirmed" if last["confirmed"] else f"rolled back: {last['reason']}"
        rows.append(("last update", f"{last['old_version']} -> {last['new_version']} {verdict}"))
    table = Table(show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)


@agent_app.command("versions")
def agent_versions(
    config: ConfigOpt,
    use: Annotated[
        str | None,
        typer.Option("--use", help="Run this install from the next start ('base': the base environment)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The agent versions installed on this host by `cmd update`; go back to one with --use."""
    from device_agent.config import load_config
    from device_agent.update import versions_dir
    from device_agent.versions import VersionStore

    store = VersionStore(versions_dir(load_config(config).state_dir))
    if use is not None:
        store.use(None if use == "base" else use)
        out.print(f"{use} runs from the agent's next start (`printfleet cmd restart-agent`)", markup=False)
        return
    facts = store.describe(__version__)
    if as_json:
        emit_json(facts)
        return
    table = Table("install", "version", "sha256", "installed", "")
    for i in facts["installs"]:
        mark = "current" if i["name"] == facts["current"] else ""
        if facts["trial"] and facts["trial"]["install"] == i["name"]:
            mark = "on trial"
        table.add_row(i["name"], i["version"], i["sha256"][:16], ts(i["installed_at"]), mark)
    out.print(table)
    if facts["current"] is None:
        out.print(f"current: the base environment (printfleet {__version__})", markup=False)


def main(args: list[str] | None = None, *, prog_name: str = "printfleet-agent") -> None:
    """``printfleet-agent``; ``python -m printfleet agent ...`` calls it with ``printfleet agent``."""
    run_app(agent_app, prog_name=prog_name, args=args)
