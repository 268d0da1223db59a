"""The `printfleet` command line. Commands are thin: parse, load config, run a service or call the API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kernel.errors import PrintfleetError
from printfleet.cli_update import register_agent_version_commands, register_update_commands
from printfleet.client import ApiClient, ClientError, resolve_target

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="printfleet: a cloud-print fleet for ESC/POS printers."
)
devices_app = typer.Typer(no_args_is_help=True, help="Printer hosts (each runs a device agent).")
printers_app = typer.Typer(no_args_is_help=True, help="Printers, addressed fleet-wide by name.")
jobs_app = typer.Typer(no_args_is_help=True, help="Print jobs and their history.")
agent_app = typer.Typer(no_args_is_help=True, help="The device agent that runs on a printer host.")
broker_app = typer.Typer(no_args_is_help=True, help="The MQTT broker.")
app.add_typer(devices_app, name="devices")
app.add_typer(printers_app, name="printers")
app.add_typer(jobs_app, name="jobs")
app.add_typer(agent_app, name="agent")
app.add_typer(broker_app, name="broker")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Globals:
    data_dir: Path
    server: str | None = None
    token: str | None = None
    verbose: bool = False


G = Globals()

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Controller data directory (default: PRINTFLEET_HOME or a per-user dir)."
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _setup_logging(default: int = logging.WARNING) -> None:
    """Entry points configure logging: our packages at ``default``, third-party libraries at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if G.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in ("printfleet", "cloud", "device_agent", "broker", "phone_bridge"):
        logging.getLogger(name).setLevel(logging.DEBUG if G.verbose else default)


@app.callback()
def main_options(
    data_dir: DataDirOpt = None,
    server: Annotated[str | None, typer.Option(help="Controller URL (or PRINTFLEET_SERVER).")] = None,
    token: Annotated[str | None, typer.Option(help="API token (or PRINTFLEET_TOKEN).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from cloud.config import default_data_dir

    G.data_dir = data_dir or default_data_dir()
    G.server, G.token, G.verbose = server, token, verbose


def api() -> ApiClient:
    try:
        return ApiClient(resolve_target(G.data_dir, G.server, G.token))
    except ClientError as exc:
        fail(str(exc))


def call(method: str, path: str, **kw: Any) -> Any:
    with api() as client:
        try:
            return client.request(method, path, **kw)
        except ClientError as exc:
            fail(str(exc))


def emit_json(obj: Any) -> None:
    out.print(json.dumps(obj, indent=2, sort_keys=True), markup=False)


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


# -- up / demo -----------------------------------------------------------------------------------


@app.command()
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

    _setup_logging(logging.INFO)
    root = data_dir or G.data_dir
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
    except PrintfleetError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}")


@app.command("demo")
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

    _setup_logging(logging.WARNING)
    run = run_degraded_demo if degraded else run_demo
    try:
        ok = asyncio.run(run(console=out, timeout=timeout))
    except PrintfleetError as exc:
        fail(str(exc))
    raise typer.Exit(0 if ok else 1)


# -- devices and printers -----------------------------------------------------------------------


def _write_agent_config(path: Path, agent_config: dict[str, Any], device: str) -> None:
    from device_agent.config import write_config

    write_config(path, dict(agent_config))


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
        out.print(
            f"registered device {name}; one-time enrolment token (expires {_ts(result['expires_at'])}):"
        )
        out.print(result["enrollment_token"], markup=False)
        out.print(
            f"on the host: printfleet agent enroll --server URL --enrollment-token TOKEN --out {name}.toml"
        )
        return
    target = out_path or Path(f"{name}.agent.toml")
    if target.exists():
        fail(f"{target} already exists; choose another --out")
    result = call("POST", "/v1/devices", json=body)
    try:
        _write_agent_config(target, result["agent_config"], name)
    except (OSError, PrintfleetError) as exc:
        call("DELETE", f"/v1/devices/{name}")
        fail(f"could not write {target}: {exc}")
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
    if out_path.exists():
        fail(f"{out_path} already exists; choose another --out")
    result = call("POST", f"/v1/devices/{name}/rotate")
    _write_agent_config(out_path, result["agent_config"], name)
    out.print(
        f"new credentials for {name} written to {out_path}; install it on the host and restart the agent"
    )


@devices_app.command("list")
def devices_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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
def printers_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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
def printers_clear(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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


# -- printing and jobs --------------------------------------------------------------------------


def _wait(client: ApiClient, job_id: str, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        slice_s = 30.0 if deadline is None else max(0.1, min(30.0, deadline - time.monotonic()))
        job: dict[str, Any] = client.request(
            "GET", f"/v1/jobs/{job_id}/wait", params={"timeout": slice_s}, timeout=slice_s + 10
        )
        from kernel.wire import JobState

        if JobState(job["state"]).terminal or (deadline is not None and time.monotonic() >= deadline):
            return job


@app.command("print")
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
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
        try:
            job = client.request("POST", "/v1/jobs", json=body)
            if wait:
                job = _wait(client, job["id"], wait_timeout)
        except ClientError as exc:
            fail(str(exc))
    if as_json:
        emit_json(job)
    else:
        line = f"job {job['id']} {job['state']}"
        if job.get("detail"):
            line += f" ({job['detail']})"
        out.print(line, markup=False)
    if wait and job["state"] != "printed":
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    printer: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
            _ts(j["created_at"]),
            j["detail"] or "",
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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
        table.add_row(_ts(e["at"]), e["state"], e["source"], e["detail"] or "")
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
                        f"{_ts(event['at'])} {event['printer']} {event['job']} {event['state']}{detail}",
                        markup=False,
                    )
        except ClientError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            return


# -- agent and broker ---------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", help="The agent.toml written by `devices add`.")],
) -> None:
    """Run the device agent (graceful stop on SIGINT/SIGTERM)."""
    from device_agent import launcher
    from device_agent.agent import Agent
    from device_agent.config import load_config

    _setup_logging(logging.INFO)
    try:
        cfg = load_config(config)
        if launcher.should_supervise(cfg):  # an update was installed: run the chosen version, judge trials
            raise typer.Exit(asyncio.run(launcher.supervise(cfg, config)))
        agent = Agent(cfg)
        asyncio.run(_run_until_signal(agent.run()))
    except PrintfleetError as exc:
        fail(str(exc))
    if agent.restart_requested:  # `printfleet cmd restart-agent`: come back as a new process
        sys.stdout.flush()
        sys.stderr.flush()
        if launcher.supervised_child():  # the launcher starts the chosen version again
            raise typer.Exit(launcher.RESTART_EXIT)
        os.execv(
            sys.executable, [sys.executable, "-m", "printfleet", "agent", "run", "--config", str(config)]
        )


async def _run_until_signal(coro: Any) -> None:
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


_WRONG_KIND = {
    "device": "this token enrols a bridge, not a printer host: use printfleet bridge enroll",
    "bridge": "this token enrols a printer host, not a bridge: use printfleet agent enroll",
}
_CONFIG_KEY = {"device": "agent_config", "bridge": "bridge_config"}


def redeem_enrollment(server: str, token: str, kind: str) -> dict[str, Any]:
    """Exchange a one-time enrolment token for a device's or a bridge's config (``POST /v1/enroll``)."""
    import httpx

    try:
        resp = httpx.post(f"{server.rstrip('/')}/v1/enroll", json={"token": token, "kind": kind}, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the controller at {server}: {exc}")
    if resp.status_code == 409:
        fail(_WRONG_KIND[kind])
    try:
        result = resp.json()
    except ValueError:
        fail(
            resp.text
            if resp.status_code >= 400
            else f"the controller answered HTTP {resp.status_code} without JSON"
        )
    if resp.status_code >= 400:
        fail(str(result.get("error", resp.text)) if isinstance(result, dict) else resp.text)
    if not isinstance(result, dict) or _CONFIG_KEY[kind] not in result:
        fail(_WRONG_KIND[kind])
    return result


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
    if out_path.exists():
        fail(f"{out_path} already exists; choose another --out")
    result = redeem_enrollment(server, enrollment_token, "device")
    try:
        _write_agent_config(out_path, result["agent_config"], result["device"])
    except (OSError, PrintfleetError) as exc:
        fail(f"could not write {out_path}: {exc}")
    out.print(f"enrolled as device {result['device']}; config written to {out_path}")
    out.print(f"start the agent: printfleet agent run --config {out_path}")


tokens_app = typer.Typer(no_args_is_help=True, help="Operator API tokens (admin, print, read).")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[
        str, typer.Option(help="admin, print (submit and follow jobs) or read (look only).")
    ] = "print",
) -> None:
    """Create a scoped API token; it is shown once."""
    result = call("POST", "/v1/tokens", json={"name": name, "scope": scope})
    out.print(f"token {name} ({scope}); keep it secret, it is not shown again:")
    out.print(result["token"], markup=False)


@tokens_app.command("list")
def tokens_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """API tokens and their scopes (never their values)."""
    tokens = call("GET", "/v1/tokens")
    if as_json:
        emit_json(tokens)
        return
    table = Table("name", "scope", "created", "revoked")
    for t in tokens:
        table.add_row(t["name"], t["scope"], _ts(t["created_at"]), _ts(t["revoked_at"]))
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke a token at once."""
    call("DELETE", f"/v1/tokens/{name}")
    out.print(f"token {name} revoked")


keys_app = typer.Typer(no_args_is_help=True, help="The controller's instruction-signing keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Signing keys, the active one first, with the devices that trust each."""
    keys = call("GET", "/v1/keys")
    if as_json:
        emit_json(keys)
        return
    table = Table("key id", "active", "trusted by")
    for k in keys:
        table.add_row(k["kid"], "yes" if k["active"] else "", ", ".join(k["devices_trusting"]) or "-")
    out.print(table)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; devices learn it (signed by a key they trust) without being cut off."""
    result = call("POST", "/v1/keys/rotate")
    out.print(f"active signing key is now {result['active']}; still trusted: {', '.join(result['keys'][1:])}")
    out.print("retire the old key with `printfleet keys retire KID` once every device trusts the new one")


@keys_app.command("retire")
def keys_retire(kid: str) -> None:
    """Stop using an old signing key (refused while a device trusts only that key)."""
    call("DELETE", f"/v1/keys/{kid}")
    out.print(f"key {kid} retired")


cmd_app = typer.Typer(
    no_args_is_help=True, help="Remote maintenance commands (printfleet cmd ACTION TARGET)."
)
app.add_typer(cmd_app, name="cmd")

TargetArg = Annotated[str | None, typer.Argument(help="A device name or tag:NAME (or --all).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every device.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the outcome; exit 0 only if it succeeded.")]
JsonOpt = Annotated[bool, typer.Option("--json")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="How long it may run once started (s).")]
ExpiresOpt = Annotated[float, typer.Option("--expires", help="How long it may wait for delivery (s).")]


def _run_cmd(
    action: str,
    target: str | None,
    all_devices: bool,
    args: dict[str, Any],
    *,
    wait: bool,
    as_json: bool,
    timeout: float,
    expires: float,
) -> None:
    if all_devices == (target is not None):
        fail("give a TARGET (device name or tag:NAME) or --all", 2)
    body = {
        "action": action,
        "target": target,
        "all": all_devices,
        "args": args,
        "timeout": timeout,
        "expires": expires,
    }
    with api() as client:
        try:
            created = client.request("POST", "/v1/commands", json=body)["commands"]
            results = []
            for cmd in created:
                if wait:
                    deadline = time.monotonic() + expires + timeout + 10
                    while True:
                        cmd = client.request(
                            "GET", f"/v1/commands/{cmd['id']}/wait", params={"timeout": 30}, timeout=40
                        )
                        if cmd["state"] in _COMMAND_TERMINAL or time.monotonic() > deadline:
                            break
                results.append(cmd)
        except ClientError as exc:
            fail(str(exc))
    if as_json:
        emit_json(results[0] if len(results) == 1 and target and not target.startswith("tag:") else results)
    else:
        for cmd in results:
            line = f"{cmd['device']}: command {cmd['id']} {cmd['state']}"
            if cmd.get("detail"):
                line += f" ({cmd['detail']})"
            out.print(line, markup=False)
            result = cmd.get("result") or {}
            if wait and action == "logs" and "lines" in result:
                for text in result["lines"]:
                    out.print(text, markup=False)
            elif wait and result:
                shown = {k: v for k, v in result.items() if k != "agent_audit"}
                out.print(json.dumps(shown, indent=2, sort_keys=True), markup=False)
    if wait and any(c["state"] != "succeeded" for c in results):
        raise typer.Exit(1)


_COMMAND_TERMINAL = {"succeeded", "failed", "rejected", "timed_out", "cancelled", "expired"}


def _simple_cmd(action: str, doc: str) -> None:
    def command(
        target: TargetArg = None,
        all_devices: AllOpt = False,
        wait: WaitOpt = False,
        as_json: JsonOpt = False,
        timeout: TimeoutOpt = 60.0,
        expires: ExpiresOpt = 3600.0,
    ) -> None:
        _run_cmd(
            action, target, all_devices, {}, wait=wait, as_json=as_json, timeout=timeout, expires=expires
        )

    command.__doc__ = doc
    cmd_app.command(action)(command)


_simple_cmd("ping", "Round trip through the agent.")
_simple_cmd("status", "Agent version, uptime, boot id, disk, printer status.")
_simple_cmd("restart-agent", "Restart the agent process; done when it is back (new boot id and session).")
_simple_cmd("reboot", "Run the host's configured reboot command (agent config: maintenance.reboot_command).")
_simple_cmd("shutdown", "Run the configured shutdown command (agent config: maintenance.shutdown_command).")


@cmd_app.command("logs")
def cmd_logs(
    target: TargetArg = None,
    all_devices: AllOpt = False,
    lines: Annotated[int, typer.Option(min=1, max=5000, help="The last N lines.")] = 100,
    since: Annotated[float | None, typer.Option(help="Lines since this many seconds ago.")] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """The agent's own log, returned to the CLI."""
    args: dict[str, Any] = {"lines": lines}
    if since is not None:
        args["since"] = time.time() - since
    _run_cmd("logs", target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires)


@cmd_app.command("config-get")
def cmd_config_get(
    target: TargetArg = None,
    key: Annotated[str | None, typer.Argument(help="One setting (all when left out).")] = None,
    all_devices: AllOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """Read the agent's live settings."""
    args = {} if key is None else {"key": key}
    _run_cmd(
        "config-get", target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires
    )


@cmd_app.command("config-set")
def cmd_config_set(
    target: TargetArg = None,
    assignments: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE ...")] = None,
    all_devices: AllOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 60.0,
    expires: ExpiresOpt = 3600.0,
) -> None:
    """Change settings live (validated; all or nothing)."""
    values: dict[str, str] = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"expected KEY=VALUE, got {item!r}", 2)
        values[key] = value
    if not values:
        fail("give at least one KEY=VALUE", 2)
    _run_cmd(
        "config-set",
        target,
        all_devices,
        {"values": values},
        wait=wait,
        as_json=as_json,
        timeout=timeout,
        expires=expires,
    )


def _printer_cmd(action: str, doc: str) -> None:
    def command(
        target: TargetArg = None,
        all_devices: AllOpt = False,
        printer: Annotated[str | None, typer.Option(help="Which printer, when the host has several.")] = None,
        wait: WaitOpt = False,
        as_json: JsonOpt = False,
        timeout: TimeoutOpt = 60.0,
        expires: ExpiresOpt = 3600.0,
    ) -> None:
        args = {} if printer is None else {"printer": printer}
        _run_cmd(
            action, target, all_devices, args, wait=wait, as_json=as_json, timeout=timeout, expires=expires
        )

    command.__doc__ = doc
    cmd_app.command(action)(command)


_printer_cmd("printer-status", "The printer's status as read from it.")
_printer_cmd("printer-selftest", "Make the printer print its self-test page (between jobs).")
_printer_cmd("open-drawer", "Kick the cash drawer (pin 2) between jobs.")
register_update_commands(cmd_app)  # cmd update, cmd rollout list|show|resume (printfleet/cli_update.py)
register_agent_version_commands(agent_app)  # agent versions (printfleet/cli_update.py)


@cmd_app.command("list")
def cmd_list(
    device: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=5000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Maintenance command records, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if device:
        params["device"] = device
    cmds = call("GET", "/v1/commands", params=params)
    if as_json:
        emit_json(cmds)
        return
    table = Table("command", "device", "action", "state", "requested by", "created", "detail")
    for c in cmds:
        table.add_row(
            c["id"],
            c["device"],
            c["action"],
            c["state"],
            c["requested_by"],
            _ts(c["created_at"]),
            c["detail"] or "",
        )
    out.print(table)


@cmd_app.command("show")
def cmd_show(command_id: str, as_json: JsonOpt = False) -> None:
    """One command record with its history and result."""
    cmd = call("GET", f"/v1/commands/{command_id}")
    if as_json:
        emit_json(cmd)
        return
    out.print(f"command {cmd['id']}: {cmd['action']} on {cmd['device']} -> {cmd['state']}", markup=False)
    table = Table("time", "state", "source", "detail")
    for e in cmd["events"]:
        table.add_row(_ts(e["at"]), e["state"], e["source"], e["detail"] or "")
    out.print(table)
    if cmd["result"]:
        out.print(json.dumps(cmd["result"], indent=2, sort_keys=True), markup=False)


@devices_app.command("tag")
def devices_tag(
    name: str, tags: Annotated[list[str] | None, typer.Argument(help="The device's tags.")] = None
) -> None:
    """Set a device's tags (used as cmd targets: tag:NAME)."""
    device = call("POST", f"/v1/devices/{name}/tags", json={"tags": tags or []})
    out.print(f"{name}: tags {', '.join(device['tags']) or '(none)'}")


@app.command("audit")
def audit_cmd(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    actor: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, error, denied or refused.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The controller's audit log: who asked for what, and every refusal."""
    params = {
        k: v for k, v in {"limit": limit, "actor": actor, "action": action, "outcome": outcome}.items() if v
    }
    events = call("GET", "/v1/audit", params=params)
    if as_json:
        emit_json(events)
        return
    table = Table("time", "actor", "action", "target", "outcome", "detail")
    for e in events:
        table.add_row(
            _ts(e["at"]), e["actor"], e["action"], e["target"] or "", e["outcome"], e["detail"] or ""
        )
    out.print(table)


@broker_app.command("run")
def broker_run(
    data_dir: DataDirOpt = None,
    mqtt_bind: Annotated[str, typer.Option(help="Listen address HOST:PORT.")] = "127.0.0.1:1883",
) -> None:
    """Run the embedded broker alone, with the registered credentials and ACLs."""
    from printfleet.runner import serve_broker

    _setup_logging(logging.INFO)
    try:
        asyncio.run(serve_broker(data_dir or G.data_dir, mqtt_bind, console=out))
    except PrintfleetError as exc:
        fail(str(exc))


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
    try:
        files = asyncio.run(export_broker(data_dir or G.data_dir, out_dir, listen))
    except PrintfleetError as exc:
        fail(str(exc))
    out.print(f"wrote {files}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)


# The bridge commands live in their own module; importing it registers them on `app`.
from printfleet import cli_bridge  # noqa: E402, F401
