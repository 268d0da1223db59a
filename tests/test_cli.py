"""The command line against a running controller: every command of the foundation, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiomqtt
import pytest

from broker.testing import free_port
from device_agent.config import load_config
from kernel import wire
from kernel.sim.printer import PtyPrinter
from tests.conftest import require_mosquitto
from tests.fleet import Fleet

RECEIPT = {
    "version": 1,
    "items": [
        {"type": "text", "text": "TABLE 7", "bold": True, "align": "center"},
        {"type": "columns", "left": "Soup", "right": "4.50"},
        {"type": "barcode", "symbology": "EAN13", "data": "4006381333931"},
        {"type": "cut"},
    ],
}


async def test_doc_raw_and_copies(embedded_fleet: Fleet, tmp_path: Path) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)

        doc = tmp_path / "receipt.json"
        doc.write_text(json.dumps(RECEIPT))
        job = (await fleet.cli("print", "k1", "--doc", str(doc), "--copies", "2", "--wait", "--json")).json()
        assert job["state"] == "printed" and job["copies_done"] == 2
        raw = tmp_path / "raw.bin"
        raw.write_bytes(b"\x1b@RAW BYTES\n\x1dV\x00")
        job2 = (await fleet.cli("print", "k1", "--raw", str(raw), "--wait", "--json")).json()
        assert job2["state"] == "printed"

        receipts = await printer.wait_for_receipts(3, timeout=5)
        texts = [r.text for r in receipts]
        assert sum("TABLE 7" in t and "[barcode EAN13 400638133393" in t for t in texts) == 2
        assert sum("RAW BYTES" in t for t in texts) == 1

        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        res = await fleet.cli("print", "k1", "--doc", str(bad), check=False)
        assert res.code != 0 and "not valid JSON" in res.stderr and "Traceback" not in res.stderr
        res = await fleet.cli("print", "k1", "--text", "a", "--raw", str(raw), check=False)
        assert res.code == 2 and "exactly one" in res.stderr

        listed = (await fleet.cli("jobs", "list", "--json")).json()
        assert [j["state"] for j in listed] == ["printed", "printed"]


async def test_remove_printer_and_device(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    await fleet.cli(
        "devices", "add", "host-1", "--serial", "/dev/ttyUSB7", "--out", str(fleet.root / "h.toml")
    )
    await fleet.cli("printers", "add", "host-1", "bar-1", "--serial", "socket://127.0.0.1:9100")
    await fleet.cli("printers", "remove", "host-1")  # the host keeps bar-1
    res = await fleet.cli("printers", "remove", "bar-1", check=False)  # its last printer cannot go alone
    assert res.code != 0 and "only printer" in res.stderr
    queued = (await fleet.cli("print", "bar-1", "--text", "never printed", "--json")).json()
    assert queued["state"] in ("queued", "dispatched")
    await fleet.cli("devices", "remove", "host-1")
    assert (await fleet.cli("devices", "list", "--json")).json() == []
    shown = (await fleet.cli("jobs", "show", queued["id"], "--json")).json()
    assert shown["state"] == "cancelled" and shown["detail"] == "printer removed"


async def test_remote_server_and_token(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    env = {**os.environ, "PRINTFLEET_HOME": str(fleet.root / "elsewhere")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "printfleet",
        "--server",
        fleet.http,
        "--token",
        fleet.svc.admin_token,
        "devices",
        "list",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == []
    env["PRINTFLEET_SERVER"], env["PRINTFLEET_TOKEN"] = fleet.http, "pft_wrong"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "printfleet",
        "devices",
        "list",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode().strip() == "error: invalid or revoked token"


async def test_no_controller_running(tmp_path: Path) -> None:
    env = {**os.environ, "PRINTFLEET_HOME": str(tmp_path)}
    env.pop("PRINTFLEET_SERVER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "printfleet",
        "jobs",
        "list",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode().startswith("error: no running controller found") and "Traceback" not in err.decode()


@pytest.mark.mosquitto
async def test_broker_export_files_run_mosquitto(embedded_fleet: Fleet, tmp_path: Path) -> None:
    """`printfleet broker export` files run a real mosquitto: the device connects, a wrong password cannot."""
    require_mosquitto()
    fleet = embedded_fleet
    cfg_path = fleet.root / "k9.toml"
    await fleet.cli("devices", "add", "k9", "--serial", "/dev/ttyUSB9", "--out", str(cfg_path))
    port = free_port()
    out = tmp_path / "mosq"
    await fleet.cli(
        "broker", "export", "--format", "mosquitto", "--out", str(out), "--listen", f"127.0.0.1:{port}"
    )
    assert {p.name for p in out.iterdir()} >= {"mosquitto.conf", "passwd", "acl"}
    conf = (out / "mosquitto.conf").read_text()
    if os.geteuid() == 0:  # mosquitto started as root drops to its own user unless told otherwise
        (out / "mosquitto.conf").write_text(f"user root\n{conf}" if "\nuser " not in conf else conf)
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/mosquitto",
        "-c",
        str(out / "mosquitto.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        cfg = load_config(cfg_path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier=cfg.username, username=cfg.username, password=cfg.password
                ) as client:
                    await client.subscribe(cfg.peer.topic(wire.Channel.DOWN), qos=1)
                    break
            except aiomqtt.MqttError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)  # mosquitto is starting; bounded by the deadline
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="dev-k9", username="dev-k9", password="wrong"
            ):
                pass
    finally:
        proc.terminate()
        await proc.wait()


async def test_broker_run_standalone(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    cfg_path = fleet.root / "k8.toml"
    await fleet.cli("devices", "add", "k8", "--serial", "/dev/ttyUSB8", "--out", str(cfg_path))
    port = free_port()
    env = fleet.env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "printfleet",
        "broker",
        "run",
        "--mqtt-bind",
        f"127.0.0.1:{port}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert f"127.0.0.1:{port}" in line.decode()
        cfg = load_config(cfg_path)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=cfg.username, username=cfg.username, password=cfg.password
        ):
            pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="anon"):
                pass
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
