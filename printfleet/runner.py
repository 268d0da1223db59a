"""What the long-running CLI commands run: `up` (with an optional demo agent), `demo` (and
`demo --degraded`, the phone-bridge path over simulated BLE), `broker run|export`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from broker import EmbeddedBroker, ListenerSpec, export_mosquitto
from cloud import db
from cloud.broker_port import BrokerRefusal, Listener
from cloud.config import ControllerConfig, DataDir, parse_hostport
from cloud.errors import ControllerError, NotFound
from cloud.registry import DbCredentials, PrinterInput, Registry
from cloud.service import ControllerService
from device_agent.agent import Agent
from device_agent.config import load_config, write_config
from kernel.signals import wait_for_signal
from kernel.sim.printer import PtyPrinter

DEMO_DEVICE = "demo"


def embedded_broker(
    *, listener: Listener, credentials: DbCredentials, on_refusal: Callable[[BrokerRefusal], None]
) -> EmbeddedBroker:
    """The controller's embedded broker (a :class:`cloud.broker_port.BrokerFactory`)."""
    spec = ListenerSpec(
        host=listener.host,
        port=listener.port,
        certfile=listener.certfile,
        keyfile=listener.keyfile,
        cafile=listener.cafile,
        require_client_cert=listener.require_client_cert,
    )
    return EmbeddedBroker(listeners=[spec], credentials=credentials, on_refusal=on_refusal)


def sample_receipt(order: str) -> dict[str, Any]:
    return {
        "version": 1,
        "items": [
            {
                "type": "text",
                "text": "PRINTFLEET CAFE",
                "bold": True,
                "width": 2,
                "height": 2,
                "align": "center",
            },
            {"type": "text", "text": "12 Harbour Street", "align": "center"},
            {"type": "line", "char": "-"},
            {"type": "columns", "left": "Flat white", "right": "3.40"},
            {"type": "columns", "left": "Almond croissant", "right": "2.90"},
            {"type": "line", "char": "-"},
            {"type": "columns", "left": "TOTAL EUR", "right": "6.30"},
            {"type": "text", "text": f"Order {order}", "align": "center"},
            {"type": "qr", "data": f"https://example.invalid/o/{order}", "size": 4, "ec": "M"},
            {"type": "feed", "lines": 2},
            {"type": "cut"},
        ],
    }


@contextlib.asynccontextmanager
async def demo_agent(svc: ControllerService, state_root: Path) -> AsyncIterator[tuple[PtyPrinter, Agent]]:
    """A simulated printer on a pty and an in-process agent driving it, registered as device 'demo'."""
    async with PtyPrinter() as printer:
        try:
            await svc.registry.get_device(DEMO_DEVICE)
            secret = await svc.registry.rotate_secret(DEMO_DEVICE)
            await svc.registry.set_printer_port(DEMO_DEVICE, printer.url)
        except NotFound:
            _, secret = await svc.registry.add_device(
                DEMO_DEVICE, PrinterInput(name=DEMO_DEVICE, serial_url=printer.url)
            )
        data = svc.agent_config(DEMO_DEVICE, secret)
        data["agent"] = {"state_dir": str(state_root / "demo-agent-state")}
        path = state_root / "demo.agent.toml"
        write_config(path, data)
        agent = Agent(load_config(path))
        task = asyncio.create_task(agent.run(), name="demo-agent")
        try:
            await asyncio.wait_for(agent.online.wait(), timeout=15)
            yield printer, agent
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve(config: ControllerConfig, *, demo: bool, console: Console) -> None:
    async with ControllerService(config, broker=embedded_broker) as svc:
        ep = svc.endpoints
        assert ep is not None
        console.print(f"printfleet is up (data in {config.data_dir.root})")
        console.print(f"  HTTP API   {ep.http_url}   (health: {ep.http_url}/healthz)")
        if svc.broker is not None:
            console.print(f"  MQTT       {', '.join(ep.mqtt_urls)}   (embedded broker)")
        else:
            console.print(f"  MQTT       {', '.join(ep.mqtt_urls)}   (external broker)")
        async with contextlib.AsyncExitStack() as stack:
            if demo:
                printer, _agent = await stack.enter_async_context(demo_agent(svc, config.data_dir.root))
                console.print(f"  demo agent online, printer '{DEMO_DEVICE}' simulated on {printer.url}")
                console.print("")
                console.print("From another terminal:")
                console.print(f"  printfleet print {DEMO_DEVICE} --text 'Hello from printfleet' --wait")
                console.print("  printfleet devices list")
                console.print("  printfleet jobs list")
                stack.push_async_callback(_show_printed, printer, console)
            console.print("Stop with Ctrl-C.")
            # until a signal, or until a supervised task dies (svc.run raises: exit non-zero)
            signal_task = asyncio.create_task(wait_for_signal(), name="signals")
            run_task = asyncio.create_task(svc.run(), name="service")
            try:
                await asyncio.wait({signal_task, run_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                signal_task.cancel()
                run_task.cancel()
                await asyncio.gather(signal_task, run_task, return_exceptions=True)
            if run_task.done() and not run_task.cancelled():
                run_task.result()  # a supervised task died: raise it (TaskDied), the exit is non-zero
            console.print(f"{signal_task.result()}: shutting down")


async def _show_printed(printer: PtyPrinter, console: Console) -> None:
    n = len(printer.model.receipts)
    if n:
        console.print(f"the simulated printer printed {n} receipt(s) this run")


def _demo_config(root: Path) -> ControllerConfig:
    """A throwaway controller in ``root``: embedded broker and HTTP API on free loopback ports."""
    data_dir = DataDir(root=root / "controller")
    return ControllerConfig(
        data_dir=data_dir, db_url=data_dir.db_url, mqtt_bind=("127.0.0.1", 0), http_bind=("127.0.0.1", 0)
    )


async def _register_demo_host(http: httpx.AsyncClient, serial_url: str, root: Path) -> Path:
    """POST /v1/devices for the demo host; its agent config written under ``root``."""
    resp = await http.post("/v1/devices", json={"name": DEMO_DEVICE, "serial_url": serial_url})
    if resp.status_code != 201:
        raise ControllerError(f"registering the demo device failed: {resp.text}")
    data = resp.json()["agent_config"]
    data["agent"] = {"state_dir": str(root / "agent-state")}
    cfg_path = root / "demo.agent.toml"
    write_config(cfg_path, data)
    return cfg_path


async def _submit_receipt(http: httpx.AsyncClient, order: str) -> str:
    resp = await http.post("/v1/jobs", json={"printer": DEMO_DEVICE, "document": sample_receipt(order)})
    if resp.status_code != 201:
        raise ControllerError(f"submitting the job failed: {resp.text}")
    job_id: str = resp.json()["id"]
    return job_id


async def _wait_job(http: httpx.AsyncClient, job_id: str, timeout: float) -> dict[str, Any]:
    """Long-poll until the job is terminal (or ``timeout``); the job with its events."""
    timeout = max(1.0, min(timeout, 300.0))
    resp = await http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}, timeout=timeout + 10)
    job: dict[str, Any] = resp.json()
    return job


def _print_events(console: Console, job: dict[str, Any], *, relative: bool = False) -> None:
    for event in job["events"]:
        when = f"+{event['at'] - job['created_at']:>5} ms  " if relative else ""
        console.print(
            f"  {when}{event['state']:<10} {event['source']}"
            + (f"  {event['detail']}" if event["detail"] else ""),
            markup=False,
        )


async def run_demo(*, console: Console, timeout: float) -> bool:
    """The bounded demo: HTTP API -> controller -> broker -> agent -> serial pty -> simulated printer."""
    with tempfile.TemporaryDirectory(prefix="printfleet-demo-") as tmp:
        root = Path(tmp)
        async with (
            ControllerService(_demo_config(root), broker=embedded_broker) as svc,
            PtyPrinter() as printer,
        ):
            ep = svc.endpoints
            assert ep is not None
            console.print(f"controller up: HTTP {ep.http_url}, MQTT {ep.mqtt_urls[0]} (embedded broker)")
            console.print(f"simulated ESC/POS printer on {printer.url}")
            headers = {"Authorization": f"Bearer {svc.admin_token}"}
            async with httpx.AsyncClient(base_url=ep.http_url, headers=headers, timeout=30) as http:
                agent = Agent(load_config(await _register_demo_host(http, printer.url, root)))
                async with _background(agent.run(), "demo-agent"):
                    await asyncio.wait_for(agent.online.wait(), timeout=timeout)
                    console.print(f"agent online (device '{DEMO_DEVICE}', session {agent.session})")
                    order = secrets.token_hex(3).upper()
                    job_id = await _submit_receipt(http, order)
                    console.print(f"job {job_id} submitted through the HTTP API")
                    job = await _wait_job(http, job_id, timeout)
            _print_events(console, job)
            receipts = [r for r in printer.model.receipts if f"Order {order}" in r.text]
            if receipts:
                console.print(Panel(Text(receipts[0].text), title="what the printer printed", expand=False))
            ok = job["state"] == "printed" and len(receipts) == 1
            console.print(
                f"job {job['state']}; the printer received {len(receipts)} copy(ies) of order {order}: "
                + ("OK" if ok else "FAILED")
            )
            return ok


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a named task for the block; cancelled (and awaited) when the block ends."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        await _stop(task)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it to end (an error it ended with is raised)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- the degraded path ----------------------------------------------------------------------------

#: The demo's phone bridge and the BLE side of its printer.
DEMO_BRIDGE = "phone-1"
DEMO_BLE_NAME = "MPT-II"
DEMO_UNIQUE_ID = "demo-printer-1"


async def run_degraded_demo(*, console: Console, timeout: float) -> bool:
    """The bounded degraded-path demo: the host goes offline, a phone bridge prints over BLE.

    One process: controller (embedded broker), an in-process agent on a pty printer, a virtual BLE
    printer on bumble's real stack (a virtual link) that is the same printer's BLE side, and a phone
    bridge near it, registered through the HTTP API and run by :func:`~phone_bridge.bridge.run_bridge`.
    """
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            ok = await _degraded_demo(console, timeout)
    except TimeoutError:
        console.print(f"a step did not finish within the {timeout:g} s timeout: FAILED", markup=False)
        return False
    console.print(f"(the demo took {time.monotonic() - started:.1f} s)")
    return ok


async def _degraded_demo(console: Console, timeout: float) -> bool:
    # bumble (the simulated radio) is imported only by the commands that use it
    from bumble.link import LocalLink
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from phone_bridge.bleak_bumble import BumbleRadio
    from phone_bridge.bridge import Outcome, run_bridge
    from phone_bridge.config import parse_bridge_config
    from phone_bridge.virtual_printer import VirtualPrinter, VirtualPrinterConfig, public_key_b64

    def step(n: int, title: str) -> None:
        console.print("")
        console.print(Text(f"{n}. {title}", style="bold"))

    with tempfile.TemporaryDirectory(prefix="printfleet-demo-") as tmp:
        root = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            step(1, "controller, host agent, BLE printer and phone bridge")
            svc = await stack.enter_async_context(
                ControllerService(_demo_config(root), broker=embedded_broker)
            )
            ep = svc.endpoints
            assert ep is not None
            console.print(f"controller up: HTTP {ep.http_url}, MQTT {ep.mqtt_urls[0]} (embedded broker)")
            pty = await stack.enter_async_context(PtyPrinter())
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=ep.http_url, headers={"Authorization": f"Bearer {svc.admin_token}"}, timeout=30
                )
            )
            agent_config = await _register_demo_host(http, pty.url, root)
            agent = Agent(load_config(agent_config))
            agent_task = await stack.enter_async_context(_background(agent.run(), "demo-agent"))
            await agent.online.wait()
            console.print(
                f"host '{DEMO_DEVICE}' online: agent driving a simulated ESC/POS printer on {pty.url}"
            )

            key = Ed25519PrivateKey.generate()
            link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves LocalLink.__init__ unannotated
            ble = await stack.enter_async_context(
                VirtualPrinter(
                    VirtualPrinterConfig(name=DEMO_BLE_NAME, unique_id=DEMO_UNIQUE_ID, identity_key=key),
                    link=link,
                )
            )
            body = {
                "ble_name": DEMO_BLE_NAME,
                "public_key": public_key_b64(key),
                "unique_id": DEMO_UNIQUE_ID,
                "identity": "required",
            }
            _expect(
                await http.patch(f"/v1/printers/{DEMO_DEVICE}/ble", json=body), 200, "setting the BLE side"
            )
            console.print(
                f"virtual BLE printer '{DEMO_BLE_NAME}' ({ble.config.profile.name}, {ble.address}) on a"
                f" bumble virtual link, set as the BLE side of printer '{DEMO_DEVICE}' (identity required)",
                markup=False,
            )

            resp = _expect(
                await http.post("/v1/bridges", json={"name": DEMO_BRIDGE, "near": [DEMO_DEVICE]}),
                201,
                "registering the bridge",
            )
            bridge_config = parse_bridge_config(resp.json()["bridge_config"])
            radio = await stack.enter_async_context(BumbleRadio(link))
            outcomes: list[Outcome] = []
            await stack.enter_async_context(
                _background(
                    run_bridge(bridge_config, backend=radio, on_outcome=outcomes.append), "demo-bridge"
                )
            )
            await _poll(http, f"/v1/bridges/{DEMO_BRIDGE}", lambda b: bool(b["online"]))
            console.print(f"phone bridge '{DEMO_BRIDGE}' registered near '{DEMO_DEVICE}' and online")

            step(2, "a receipt on the normal path")
            first = secrets.token_hex(3).upper()
            job = await _wait_job(http, await _submit_receipt(http, first), timeout)
            console.print(f"job {job['id']} {job['state']} by {job['executor']} (route {job['route']})")
            normal_ok = job["state"] == "printed" and job["route"] == "agent"

            step(3, "the host goes offline")
            await _stop(agent_task)
            stopped = time.monotonic()
            device = await _poll(http, f"/v1/devices/{DEMO_DEVICE}", lambda d: not d["online"])
            took_ms = (time.monotonic() - stopped) * 1000
            reason = device["offline_reason"] or "no reason given"
            console.print(
                f"agent stopped; host offline: the controller noticed in {took_ms:.0f} ms ({reason})",
                markup=False,
            )

            step(4, "a receipt while the host is offline: printed over BLE by the bridge")
            second = secrets.token_hex(3).upper()
            job_id = await _submit_receipt(http, second)
            console.print(f"job {job_id} submitted through the HTTP API")
            job = await _wait_job(http, job_id, timeout)
            console.print(f"its events ({job['size']} bytes of ESC/POS):")
            _print_events(console, job, relative=True)
            if job["state"] == "printed":  # every byte acknowledged; the printer is still printing
                await ble.wait_until(
                    lambda p: any(f"Order {second}" in r.text for r in p.model.receipts), timeout=None
                )
            receipts = [r for r in ble.model.receipts if f"Order {second}" in r.text]
            if receipts:
                console.print(
                    Panel(Text(receipts[0].text), title="what the virtual BLE printer printed", expand=False)
                )
            details = " | ".join(e["detail"] or "" for e in job["events"])
            ble_ok = (
                job["state"] == "printed"
                and job["route"] == "bridge"
                and "identity verified" in (job["detail"] or "")
                and f"rerouted to bridge {DEMO_BRIDGE}" in details
                and len(receipts) == 1
            )
            console.print(
                f"job {job['state']} by {job['executor']} (route {job['route']}): {job['detail']}",
                markup=False,
            )

            step(5, "the host comes back")
            agent = Agent(load_config(agent_config))
            await stack.enter_async_context(_background(agent.run(), "demo-agent-back"))
            await agent.online.wait()
            console.print(f"host '{DEMO_DEVICE}' online again (session {agent.session})")
            third = secrets.token_hex(3).upper()
            job = await _wait_job(http, await _submit_receipt(http, third), timeout)
            console.print(
                f"a new receipt: job {job['id']} {job['state']} by {job['executor']} (route {job['route']})"
            )
            back_ok = job["state"] == "printed" and job["route"] == "agent"

            table = Table("order", "path", "host's printer (pty)", "BLE printer")
            counts: dict[str, tuple[int, int]] = {}
            for order, path in ((first, "normal"), (second, "degraded"), (third, "normal, host back")):
                on_pty = sum(r.text.count(f"Order {order}") for r in pty.model.receipts)
                on_ble = sum(r.text.count(f"Order {order}") for r in ble.model.receipts)
                counts[order] = (on_pty, on_ble)
                table.add_row(order, path, str(on_pty), str(on_ble))
            console.print(table)
            ok = (
                normal_ok
                and ble_ok
                and back_ok
                and counts[first] == (1, 0)
                and counts[second] == (0, 1)
                and counts[third] == (1, 0)
            )
            console.print(
                f"order {second} printed once, over BLE, and never by the returning host: "
                + ("OK" if ok else "FAILED"),
                markup=False,
            )
            return ok
    raise AssertionError("unreachable")


def _expect(resp: httpx.Response, status: int, what: str) -> httpx.Response:
    if resp.status_code != status:
        raise ControllerError(f"{what} failed: HTTP {resp.status_code} {resp.text}")
    return resp


async def _poll(
    http: httpx.AsyncClient, path: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET ``path`` until ``predicate`` holds for the answer (the caller bounds the wait)."""
    while True:
        resp = _expect(await http.get(path), 200, f"GET {path}")
        data: dict[str, Any] = resp.json()
        if predicate(data):
            return data
        await asyncio.sleep(0.05)  # polling interval of an observer; the demo's timeout bounds it


async def serve_broker(data_dir: Path, mqtt_bind: str, *, console: Console) -> None:
    dd = DataDir(root=data_dir)
    if not dd.db_path.exists():
        raise ControllerError(f"no controller database in {data_dir}: run `printfleet up` once first")
    await asyncio.to_thread(db.migrate, dd.db_url)
    engine = db.make_engine(dd.db_url)
    try:
        registry = Registry(db.make_sessionmaker(engine))
        host, port = parse_hostport(mqtt_bind)
        async with EmbeddedBroker(
            listeners=[ListenerSpec(host=host, port=port)], credentials=DbCredentials(registry, "main")
        ) as broker:
            for h, p in broker.bound_addresses:
                console.print(f"broker listening on mqtt://{h}:{p}; stop with Ctrl-C")
            await wait_for_signal()
    finally:
        await engine.dispose()


async def export_broker(data_dir: Path, out_dir: Path, listen: str) -> Path:
    dd = DataDir(root=data_dir)
    if not dd.db_path.exists():
        raise ControllerError(f"no controller database in {data_dir}: run `printfleet up` once first")
    await asyncio.to_thread(db.migrate, dd.db_url)
    engine = db.make_engine(dd.db_url)
    try:
        registry = Registry(db.make_sessionmaker(engine))
        creds = await DbCredentials(registry, "main").all()
        host, port = parse_hostport(listen)
        files = export_mosquitto(out_dir, creds, listener_host=host, listener_port=port)
    finally:
        await engine.dispose()
    return files.conf
