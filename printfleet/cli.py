"""The ``printfleet`` command line: the root options, and every command group assembled in one app.

Each group lives in its own module and stays thin (parse, call the API or run a service):
devices and printers (:mod:`printfleet.cli_devices`), print and jobs (:mod:`printfleet.cli_jobs`),
maintenance commands, updates and rollouts (:mod:`printfleet.cli_cmd`, :mod:`printfleet.cli_update`),
phone bridges (:mod:`printfleet.cli_bridges`, :mod:`printfleet.bridge_cli`), the host's agent
(:mod:`printfleet.agent_cli`, also ``printfleet-agent``), tokens, keys and the audit log
(:mod:`printfleet.cli_admin`), and up/demo/broker (:mod:`printfleet.cli_serve`). Errors become
exit codes and one-line messages in one place: :mod:`printfleet.cli_common`.

The ``printfleet`` command enters through :mod:`printfleet.entry` (``agent ...`` goes straight to the
agent's command line); everything else needs the full install: where only a role is installed
(``printfleet[agent]``, ``printfleet[bridge]``) it says in one line to install ``printfleet[cloud]``.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated

import typer

from printfleet.agent_cli import agent_app
from printfleet.cli_admin import audit_cmd, keys_app, tokens_app
from printfleet.cli_bridges import bridge_app
from printfleet.cli_cmd import cmd_app
from printfleet.cli_common import (
    EXIT_FAILED,
    OPTIONS,
    CliGroup,
    err,
    missing_extra_message,
    run_app,
)
from printfleet.cli_devices import devices_app, printers_app
from printfleet.cli_jobs import jobs_app, print_cmd
from printfleet.cli_serve import DataDirOpt, broker_app, demo_cmd, up

app = typer.Typer(
    cls=CliGroup,
    no_args_is_help=True,
    add_completion=False,
    help="printfleet: a cloud-print fleet for ESC/POS printers.",
)


@app.callback()
def main_options(
    data_dir: DataDirOpt = None,
    server: Annotated[str | None, typer.Option(help="Controller URL (or PRINTFLEET_SERVER).")] = None,
    token: Annotated[str | None, typer.Option(help="API token (or PRINTFLEET_TOKEN).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from cloud.config import default_data_dir

    OPTIONS.data_dir = data_dir or default_data_dir()
    OPTIONS.server, OPTIONS.token, OPTIONS.verbose = server, token, verbose


app.command()(up)
app.command("demo")(demo_cmd)
app.command("print")(print_cmd)
app.command("audit")(audit_cmd)
app.add_typer(devices_app, name="devices")
app.add_typer(printers_app, name="printers")
app.add_typer(jobs_app, name="jobs")
app.add_typer(cmd_app, name="cmd")
app.add_typer(agent_app, name="agent")
app.add_typer(bridge_app, name="bridge")
app.add_typer(broker_app, name="broker")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")

#: What the full command line needs beyond a role's extra: the import names of printfleet[cloud].
CLOUD_STACK = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "amqtt")


def missing_cloud_stack() -> str | None:
    """The first module of the controller's stack that is not installed (``None``: all are)."""
    for name in CLOUD_STACK:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ImportError:  # a parent package that cannot be imported
            return name
    return None


def main(args: list[str] | None = None) -> None:
    """The full command line (``printfleet`` but ``agent ...``: :mod:`printfleet.entry`)."""
    missing = missing_cloud_stack()
    if missing is not None:
        err.print(
            f"error: {missing_extra_message(missing, 'cloud')} (on a printer host: printfleet-agent;"
            " on a phone: printfleet-bridge)",
            markup=False,
        )
        sys.exit(EXIT_FAILED)
    run_app(app, prog_name="printfleet", args=args)


__all__ = ["app", "main"]
