"""What every command of the command lines shares: output, the root options, logging, signals, and
the one place where errors become exit codes and one-line messages.

Error root of the command line::

    PrintfleetError (kernel.errors)     -> "error: <message>", exit 1
     +-- CliError                       -> "error: <message>", exit ``code`` (2: bad usage)
     +-- ClientError (printfleet.client), AgentError, BridgeError, ...   -> exit 1
    ModuleNotFoundError of an optional dependency -> "error: ... install 'printfleet[EXTRA]'", exit 1
    KeyboardInterrupt                   -> exit 130

Any other exception is a bug and keeps its traceback. Commands raise; :class:`CliGroup` maps.
Imports only the kernel, typer and rich: ``printfleet-agent`` and ``printfleet-bridge`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from kernel.errors import PrintfleetError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Top-level import names of optional dependencies -> the extra that installs them.
EXTRA_OF_MODULE = {
    "fastapi": "cloud",
    "uvicorn": "cloud",
    "sqlalchemy": "cloud",
    "alembic": "cloud",
    "aiosqlite": "cloud",
    "amqtt": "cloud",
    "escpos": "cloud",
    "PIL": "cloud",
    "serial": "agent",
    "bleak": "bridge",
    "bumble": "ble-sim",
}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Options:
    """The root options (``printfleet --data-dir/--server/--token/-v``), set once per run."""

    data_dir: Path | None = None
    server: str | None = None
    token: str | None = None
    verbose: bool = False


OPTIONS = Options()


class CliError(PrintfleetError):
    """A command that cannot go on; ``message`` is the one line shown, ``code`` the exit status."""

    def __init__(self, message: str, *, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code=code)


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the missing module, when it is one of ours."""
    top = (exc.name or "").split(".", 1)[0]
    return EXTRA_OF_MODULE.get(top)


def missing_extra_message(module: str, extra: str) -> str:
    return f"{module} is not installed: this needs pip install 'printfleet[{extra}]'"


def describe(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected error; ``None`` for a bug."""
    match exc:
        case CliError():
            return exc.code, exc.message
        case PrintfleetError():
            return EXIT_FAILED, str(exc)
        case ModuleNotFoundError() if (extra := missing_extra(exc)) is not None:
            return EXIT_FAILED, missing_extra_message(str(exc.name).split(".", 1)[0], extra)
        case _:
            return None


class CliGroup(TyperGroup):
    """A typer group that maps expected errors (:func:`describe`) to one line on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            known = describe(exc)
            if known is None:
                raise
            code, message = known
            err.print(f"error: {message}", markup=False)
            raise typer.Exit(code) from None


def run_app(app: typer.Typer, *, prog_name: str, args: Sequence[str] | None = None) -> None:
    """An entry point: run ``app`` (its group maps errors); a closed pipe ends quietly."""
    try:
        app(prog_name=prog_name, args=list(args) if args is not None else None)
    except BrokenPipeError:
        os._exit(EXIT_FAILED)


def setup_logging(default: int = logging.WARNING) -> None:
    """Entry points configure logging: our packages at ``default``, third-party libraries at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if OPTIONS.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in ("printfleet", "kernel", "cloud", "device_agent", "broker", "phone_bridge"):
        logging.getLogger(name).setLevel(logging.DEBUG if OPTIONS.verbose else default)


async def run_until_signal(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` until it ends or SIGINT/SIGTERM arrives (then cancel it and wait for it)."""
    from kernel.signals import wait_for_signal

    task = asyncio.create_task(coro, name="main")
    sig = asyncio.create_task(wait_for_signal(), name="signals")
    done, _ = await asyncio.wait({task, sig}, return_when=asyncio.FIRST_COMPLETED)
    if sig in done:
        task.cancel()
    else:
        sig.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def emit_json(obj: Any) -> None:
    out.print(json.dumps(obj, indent=2, sort_keys=True), markup=False)


def ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def refuse_existing(path: Path) -> None:
    if path.exists():
        fail(f"{path} already exists; choose another --out")


JsonOpt = Annotated[bool, typer.Option("--json")]
