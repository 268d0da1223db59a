"""What the long-running CLI commands run: `up` (with an optional demo agent), `demo`, `broker run|export`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from broker import EmbeddedBroker, ListenerSpec, export_mosquitto
from cloud import db
from cloud.config import ControllerConfig, DataDir, parse_hostport
from cloud.errors import ControllerError, NotFound
from cloud.registry import DbCredentials, PrinterInput, Registry
from cloud.service import ControllerService
from device_agent.agent import Agent
from device_agent.config import load_config, write_config
from printfleet.escpos.simulator import PtyPrinter
from printfleet.signals import wait_for_signal

DEMO_DEVICE = "demo"


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
    async with ControllerService(config) as svc:
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
            sig = await wait_for_signal()
            console.print(f"{sig}: shutting down")


async def _show_printed(printer: PtyPrinter, console: Console) -> None:
    n = len(printer.model.receipts)
    if n:
        console.print(f"the simulated printer printed {n} receipt(s) this run")


async def run_demo(*, console: Console, timeout: float) -> bool:
    """The bounded demo: HTTP API -> controller -> broker -> agent -> serial pty -> simulated printer."""
    with tempfile.TemporaryDirectory(prefix="printfleet-demo-") as tmp:
        root = Path(tmp)
        config = ControllerConfig(
            data_dir=DataDir(root=root / "controller"),
            db_url=DataDir(root=root / "controller").db_url,
            mqtt_bind=("127.0.0.1", 0),
            http_bind=("127.0.0.1", 0),
        )
        async with ControllerService(config) as svc, PtyPrinter() as printer:
            ep = svc.endpoints
            assert ep is not None
            console.print(f"controller up: HTTP {ep.http_url}, MQTT {ep.mqtt_urls[0]} (embedded broker)")
            console.print(f"simulated ESC/POS printer on {printer.url}")
            headers = {"Authorization": f"Bearer {svc.admin_token}"}
            async with httpx.AsyncClient(base_url=ep.http_url, headers=headers, timeout=30) as http:
                resp = await http.post("/v1/devices", json={"name": DEMO_DEVICE, "serial_url": printer.url})
                if resp.status_code != 201:
                    raise ControllerError(f"registering the demo device failed: {resp.text}")
                data = resp.json()["agent_config"]
                data["agent"] = {"state_dir": str(root / "agent-state")}
                cfg_path = root / "demo.agent.toml"
                write_config(cfg_path, data)
                agent = Agent(load_config(cfg_path))
                agent_task = asyncio.create_task(agent.run(), name="demo-agent")
                try:
                    await asyncio.wait_for(agent.online.wait(), timeout=timeout)
                    console.print(f"agent online (device '{DEMO_DEVICE}', session {agent.session})")
                    order = secrets.token_hex(3).upper()
                    resp = await http.post(
                        "/v1/jobs", json={"printer": DEMO_DEVICE, "document": sample_receipt(order)}
                    )
                    if resp.status_code != 201:
                        raise ControllerError(f"submitting the job failed: {resp.text}")
                    job_id = resp.json()["id"]
                    console.print(f"job {job_id} submitted through the HTTP API")
                    resp = await http.get(
                        f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}, timeout=timeout + 10
                    )
                    job = resp.json()
                finally:
                    agent_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await agent_task
            for event in job["events"]:
                console.print(
                    f"  {event['state']:<10} {event['source']}"
                    + (f"  {event['detail']}" if event["detail"] else "")
                )
            receipts = [r for r in printer.model.receipts if f"Order {order}" in r.text]
            if receipts:
                console.print(Panel(Text(receipts[0].text), title="what the printer printed", expand=False))
            ok = job["state"] == "printed" and len(receipts) == 1
            console.print(
                f"job {job['state']}; the printer received {len(receipts)} copy(ies) of order {order}: "
                + ("OK" if ok else "FAILED")
            )
            return ok


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
