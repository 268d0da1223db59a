"""`printfleet cmd update` and `printfleet cmd rollout ...`: agent updates, at once or as phased rollouts.

Registered onto the `cmd` group (:mod:`printfleet.cli_cmd`) by :func:`register_update_commands`.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from printfleet.cli_api import api, call
from printfleet.cli_common import EXIT_FAILED, EXIT_INTERRUPTED, JsonOpt, emit_json, err, fail, out, ts
from printfleet.client import ApiClient, ClientError

COMMAND_TERMINAL = {"succeeded", "failed", "rejected", "timed_out", "cancelled", "expired"}
RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|min|m|h|hour))?\s*$")
_PER_MIN = {"s": 60.0, "sec": 60.0, "min": 1.0, "m": 1.0, "h": 1 / 60, "hour": 1 / 60, None: 1.0}


def parse_rate(text: str) -> float:
    """``N/min`` (or ``N/s``, ``N/h``; a bare N is per minute) -> devices per minute."""
    match = RATE_RE.match(text)
    if not match:
        raise ValueError(f"invalid rate {text!r}: expected N/min, N/s or N/h")
    rate = float(match.group(1)) * _PER_MIN[match.group(2)]
    if not 0 < rate <= 6000:
        raise ValueError(f"rate {text!r} must be above 0 and at most 6000 devices per minute")
    return rate


def _package_fields(client: ApiClient, package: str, sha256: str) -> dict[str, Any]:
    """A URL is passed on as it is; a file is checked against ``sha256`` and uploaded once."""
    if re.match(r"^[a-z]+://", package):
        return {"url": package}
    try:
        data = Path(package).read_bytes()
    except OSError as exc:
        fail(f"cannot read {package}: {exc.strerror or exc}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        fail(f"{package} hashes to {actual}, not the --sha256 given ({sha256}); nothing uploaded")
    try:
        client.request("GET", f"/v1/packages/{sha256}")
    except ClientError as exc:
        if exc.status != 404:
            raise
        client.request(
            "PUT",
            f"/v1/packages/{sha256}",
            content=data,
            headers={"content-type": "application/octet-stream"},
            timeout=300,
        )
    return {}


def _versions(device: dict[str, Any]) -> str:
    old, new, tried = device.get("old_version"), device.get("new_version"), device.get("attempted_version")
    if tried:
        return f"{old or '?'} (rolled back from {tried})"
    if new:
        return f"{old or '?'} -> {new}"
    return old or "-"


def print_summary(view: dict[str, Any]) -> None:
    table = Table("device", "state", "version", "detail")
    for d in view["devices"]:
        table.add_row(d["device"], d["state"], _versions(d), d["detail"] or "")
    out.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in view["counts"].items() if n)
    line = f"rollout {view['id']} {view['state']} ({counts})"
    if view.get("detail"):
        line += f": {view['detail']}"
    out.print(line, markup=False)


def follow_rollout(client: ApiClient, view: dict[str, Any], *, show_progress: bool) -> dict[str, Any]:
    """Follow a rollout until it is done (a progress bar on a terminal); Ctrl-C leaves it running."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=out,
        disable=not show_progress,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task(f"rollout {view['id']}", total=view["total"], failed=0)
            while True:
                counts = view["counts"]
                finished = counts["succeeded"] + counts["failed"] + counts["skipped"]
                progress.update(task, completed=finished, failed=counts["failed"])
                if view["done"]:
                    return view
                view = client.request(
                    "GET",
                    f"/v1/rollouts/{view['id']}/wait",
                    params={"known": view["progress"], "timeout": 20},
                    timeout=40,
                )
    except KeyboardInterrupt:
        err.print(
            f"rollout {view['id']} goes on in the controller; follow it with"
            f" `printfleet cmd rollout show {view['id']} --wait`",
            markup=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _finish_rollout(client: ApiClient, view: dict[str, Any], *, as_json: bool) -> None:
    view = follow_rollout(client, view, show_progress=out.is_terminal and not as_json)
    if as_json:
        emit_json(view)
    else:
        print_summary(view)
    if view["state"] != "completed" or view["counts"]["failed"]:
        raise typer.Exit(EXIT_FAILED)


def register_update_commands(cmd_app: typer.Typer) -> None:
    """Add `update` and the `rollout` group to the `printfleet cmd` group."""
    rollout_app = typer.Typer(no_args_is_help=True, help="Phased rollouts of `cmd update --rate`.")

    @cmd_app.command("update")
    def cmd_update(
        package: Annotated[
            str, typer.Option("--package", help="A printfleet wheel: a FILE (uploaded once) or an https URL.")
        ],
        sha256: Annotated[str, typer.Option("--sha256", help="The package's sha256 (the authority).")],
        target: Annotated[str | None, typer.Argument(help="A device name or tag:NAME (or --all).")] = None,
        all_devices: Annotated[bool, typer.Option("--all", help="Every device.")] = False,
        health_timeout: Annotated[
            float, typer.Option("--health-timeout", help="Seconds the new version has to come back online.")
        ] = 120.0,
        rate: Annotated[
            str | None, typer.Option("--rate", help="A phased rollout: devices started per minute (N/min).")
        ] = None,
        abort_above: Annotated[
            float,
            typer.Option("--abort-above", min=0, max=100, help="Rollout: abort once over PERCENT % failed."),
        ] = 0.0,
        detach: Annotated[
            bool, typer.Option("--detach", help="Rollout: start it and return its id.")
        ] = False,
        wait: Annotated[
            bool, typer.Option("--wait", help="Wait for the outcome; exit 0 only if it succeeded.")
        ] = False,
        as_json: JsonOpt = False,
        timeout: Annotated[
            float, typer.Option("--timeout", help="How long it may run once started (s).")
        ] = 600.0,
        expires: Annotated[
            float, typer.Option("--expires", help="How long it may wait for delivery (s).")
        ] = 3600.0,
    ) -> None:
        """Install a new agent version, keeping the previous one (rolled back if it does not come up)."""
        if all_devices == (target is not None):
            fail("give a TARGET (device name or tag:NAME) or --all", 2)
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            fail("--sha256 must be 64 hex digits", 2)
        body: dict[str, Any] = {
            "target": target,
            "all": all_devices,
            "sha256": sha256,
            "health_s": health_timeout,
            "timeout": timeout,
            "expires": expires,
        }
        if rate is not None:
            try:
                body["rate_per_min"] = parse_rate(rate)
            except ValueError as exc:
                fail(str(exc), 2)
            body["abort_above"] = abort_above
        elif abort_above:
            fail("--abort-above is for rollouts: give --rate too", 2)
        with api() as client:
            body.update(_package_fields(client, package, sha256))
            created = client.request("POST", "/v1/updates", json=body)
            if "rollout" in created:
                view = created["rollout"]
                if detach:
                    _say(view, f"rollout {view['id']} started on {view['total']} device(s)", as_json)
                    return
                _finish_rollout(client, view, as_json=as_json)
                return
            limit = expires + timeout + 10
            results = [wait_command(client, c, limit) if wait else c for c in created["commands"]]
        if as_json:
            single = len(results) == 1 and target is not None and not target.startswith("tag:")
            emit_json(results[0] if single else results)
        else:
            for cmd in results:
                line = f"{cmd['device']}: command {cmd['id']} {cmd['state']}"
                if cmd.get("detail"):
                    line += f" ({cmd['detail']})"
                out.print(line, markup=False)
        if wait and any(c["state"] != "succeeded" for c in results):
            raise typer.Exit(EXIT_FAILED)

    @rollout_app.command("list")
    def rollout_list(
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
        as_json: JsonOpt = False,
    ) -> None:
        """Rollouts, newest first."""
        rollouts = call("GET", "/v1/rollouts", params={"limit": limit})
        if as_json:
            emit_json(rollouts)
            return
        table = Table("rollout", "state", "target", "done", "failed", "skipped", "created", "detail")
        for r in rollouts:
            c = r["counts"]
            table.add_row(
                r["id"],
                r["state"],
                r["target"],
                f"{c['succeeded'] + c['failed'] + c['skipped']}/{r['total']}",
                str(c["failed"]),
                str(c["skipped"]),
                ts(r["created_at"]),
                r["detail"] or "",
            )
        out.print(table)

    @rollout_app.command("show")
    def rollout_show(
        rollout_id: str,
        wait: Annotated[bool, typer.Option("--wait", help="Follow it until it is done.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """One rollout: each device's state, old -> new version and detail."""
        with api() as client:
            view = client.request("GET", f"/v1/rollouts/{rollout_id}")
            if wait:
                _finish_rollout(client, view, as_json=as_json)
                return
        if as_json:
            emit_json(view)
        else:
            print_summary(view)

    @rollout_app.command("resume")
    def rollout_resume(
        rollout_id: str,
        abort_above: Annotated[
            float | None,
            typer.Option("--abort-above", min=0, max=100, help="A new threshold (PERCENT) from now on."),
        ] = None,
        detach: Annotated[bool, typer.Option("--detach", help="Resume it and return.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Start the devices an aborted rollout skipped; earlier failures no longer count."""
        body = {} if abort_above is None else {"abort_above": abort_above}
        with api() as client:
            view = client.request("POST", f"/v1/rollouts/{rollout_id}/resume", json=body)
            if detach:
                _say(view, f"rollout {view['id']} resumed", as_json)
                return
            _finish_rollout(client, view, as_json=as_json)

    cmd_app.add_typer(rollout_app, name="rollout")


def _say(view: dict[str, Any], line: str, as_json: bool) -> None:
    if as_json:
        emit_json(view)
    else:
        out.print(line, markup=False)


def wait_command(client: ApiClient, cmd: dict[str, Any], limit_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while cmd["state"] not in COMMAND_TERMINAL and time.monotonic() < deadline:
        cmd = client.request("GET", f"/v1/commands/{cmd['id']}/wait", params={"timeout": 30}, timeout=40)
    return cmd


__all__ = ["parse_rate", "print_summary", "register_update_commands", "wait_command"]
