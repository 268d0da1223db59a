"""``printfleet print`` and ``printfleet jobs ...``: submitting print jobs and following them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernel.wire import JobState
from printfleet.cli_api import api, call
from printfleet.cli_common import EXIT_FAILED, JsonOpt, emit_json, err, fail, out, ts
from printfleet.client import ApiClient

jobs_app = typer.Typer(no_args_is_help=True, help="Print jobs and their history.")


def _wait(client: ApiClient, job_id: str, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        slice_s = 30.0 if deadline is None else max(0.1, min(30.0, deadline - time.monotonic()))
        job: dict[str, Any] = client.request(
            "GET", f"/v1/jobs/{job_id}/wait", params={"timeout": slice_s}, timeout=slice_s + 10
        )
        if JobState(job["state"]).terminal or (deadline is not None and time.monotonic() >= deadline):
            return job


def print_cmd(
    printer: str,
    text: Annotated[str | None, typer.Option(help="Plain text to print.")] = None,
    doc: Annotated[
        Path | None, typer.Option(help="A receipt document (JSON, see docs/documents.md).")
    ] = None,
    raw: Annotated[Path | None, typer.Option(help="Raw ESC/POS bytes to send as they are.")] = None,
    copies: Annotated[int, typer.Option(min=1, max=100)] = 1,
    priority: Annotated[int, typer.Option(min=-100, max=100, help="Higher prints first.")] = 0,
    ttl: Annotated[
        float | None, typer.Option(help="Seconds after which the job is stale and must not print.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key twice creates one job.")] = None,
    origin: Annotated[
        str | None,
        typer.Option(
            "--from", help="The bridge (a user's phone) it comes from: tried first if the path fails."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome; exit 0 only if printed.")] = False,
    wait_timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a print job through the HTTP API."""
    given = [x for x in (text, doc, raw) if x is not None]
    if len(given) != 1:
        fail("give exactly one of --text, --doc, --raw", 2)
    body: dict[str, Any] = {"printer": printer, "copies": copies, "priority": priority}
    if ttl is not None:
        body["ttl"] = ttl
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if origin is not None:
        body["from"] = origin
    try:
        if text is not None:
            body["text"] = text
        elif doc is not None:
            document = json.loads(doc.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                fail(f"{doc}: a document is a JSON object")
            body["document"] = document
        elif raw is not None:
            body["raw_base64"] = base64.b64encode(raw.read_bytes()).decode()
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(f"{doc} is not valid JSON: {exc}")
    with api() as client:
        job = client.request("POST", "/v1/jobs", json=body)
        if wait:
            job = _wait(client, job["id"], wait_timeout)
    if as_json:
        emit_json(job)
    else:
        line = f"job {job['id']} {job['state']}"
        if job.get("detail"):
            line += f" ({job['detail']})"
        out.print(line, markup=False)
    if wait and job["state"] != "printed":
        raise typer.Exit(EXIT_FAILED)


@jobs_app.command("list")
def jobs_list(
    printer: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs, newest first."""
    params = {k: v for k, v in {"printer": printer, "state": state, "limit": limit}.items() if v is not None}
    jobs = call("GET", "/v1/jobs", params=params)
    if as_json:
        emit_json(jobs)
        return
    table = Table("job", "printer", "state", "copies", "created", "detail")
    for j in jobs:
        table.add_row(
            j["id"],
            j["printer"],
            j["state"],
            f"{j['copies_done']}/{j['copies']}",
            ts(j["created_at"]),
            j["detail"] or "",
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """One job with its full event history."""
    job = call("GET", f"/v1/jobs/{job_id}")
    if as_json:
        emit_json(job)
        return
    out.print(f"job {job['id']}  printer {job['printer']} on {job['device']}", markup=False)
    out.print(f"state {job['state']}" + (f" ({job['detail']})" if job["detail"] else ""), markup=False)
    path = "phone bridge" if job.get("route") == "bridge" else "printer host"
    executor = job.get("executor") or "-"
    out.print(
        f"path {path} ({executor})" + (f", from {job['origin']}" if job.get("origin") else ""), markup=False
    )
    out.print(
        f"copies {job['copies_done']}/{job['copies']}, {job['size']} bytes, attempts {job['attempts']}",
        markup=False,
    )
    table = Table("time", "state", "source", "detail")
    for e in job["events"]:
        table.add_row(ts(e["at"]), e["state"], e["source"], e["detail"] or "")
    out.print(table)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job that has not started printing."""
    result = call("POST", f"/v1/jobs/{job_id}/cancel")
    out.print(f"job {job_id}: {result.get('detail') or result['state']}", markup=False)


@jobs_app.command("reprint")
def jobs_reprint(job_id: str) -> None:
    """Print a finished job again as a new job linked to it (the operator's decision for `unknown`)."""
    job = call("POST", f"/v1/jobs/{job_id}/reprint")
    out.print(f"job {job['id']} queued (reprint of {job_id})", markup=False)


@jobs_app.command("watch")
def jobs_watch(printer: Annotated[str | None, typer.Argument()] = None) -> None:
    """Show job transitions live (Ctrl-C to stop)."""
    with api() as client:
        try:
            params = {"printer": printer} if printer else {}
            for event in client.stream_lines("/v1/events", **params):
                if event.get("type") == "hello":
                    err.print("watching job transitions (Ctrl-C to stop)", markup=False)
                if event.get("type") == "job":
                    detail = f" ({event['detail']})" if event.get("detail") else ""
                    out.print(
                        f"{ts(event['at'])} {event['printer']} {event['job']} {event['state']}{detail}",
                        markup=False,
                    )
        except KeyboardInterrupt:
            return
