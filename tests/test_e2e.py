"""End to end: CLI -> HTTP API -> controller -> broker -> agent process -> pty -> simulated printer."""

from __future__ import annotations

import json
import signal

from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet


async def test_print_a_receipt_end_to_end(fleet: Fleet) -> None:
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("kiosk-1", printer.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)

        res = await fleet.cli(
            "print", "kiosk-1", "--text", "Hello from printfleet\nline two", "--wait", "--json"
        )
        job = res.json()
        assert job["state"] == "printed"

        receipts = await printer.wait_for_receipts(1, timeout=5)
        assert len(receipts) == 1
        assert "Hello from printfleet" in receipts[0].text
        assert "line two" in receipts[0].text

        shown = (await fleet.cli("jobs", "show", job["id"], "--json")).json()
        assert shown["state"] == "printed"
        states = [e["state"] for e in shown["events"]]
        assert states[0] == "queued" and states[-1] == "printed"
        assert "printing" in states

        listed = (await fleet.cli("devices", "list", "--json")).json()
        (dev,) = listed
        assert dev["name"] == "kiosk-1" and dev["online"] is True
        assert dev["printers"][0]["status"] == "ready"
        assert dev["latency_ms"] is not None and dev["latency_ms"] >= 0


async def test_second_printer_reaches_running_agent(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as counter, PtyPrinter() as kitchen:
        cfg = await fleet.add_device("shop-1", counter.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("shop-1", lambda d: d["online"], timeout=20)
        await fleet.cli("printers", "add", "shop-1", "kitchen-1", "--serial", kitchen.url)
        res = await fleet.cli("print", "kitchen-1", "--text", "2x soup", "--wait", "--json")
        assert res.json()["state"] == "printed"
        receipts = await kitchen.wait_for_receipts(1, timeout=5)
        assert "2x soup" in receipts[0].text
        assert counter.model.receipts == []
        printers = (await fleet.cli("printers", "list", "--json")).json()
        assert sorted(p["name"] for p in printers) == ["kitchen-1", "shop-1"]


async def test_agent_restart_and_late_will(embedded_fleet: Fleet) -> None:
    """SIGKILL -> offline fast (will); restart -> online; a late will of the old session changes nothing."""
    import aiomqtt

    from device_agent.config import load_config
    from kernel import wire

    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg_path = await fleet.add_device("kiosk-2", printer.url)
        agent = await fleet.start_agent(cfg_path)
        await fleet.wait_device("kiosk-2", lambda d: d["online"], timeout=20)
        first_session = (await fleet.device("kiosk-2"))["session"]
        agent.signal(signal.SIGKILL)
        await agent.proc.wait()  # type: ignore[union-attr]
        took = await fleet.wait_device("kiosk-2", lambda d: not d["online"], timeout=5)
        assert took < 2.0, f"offline after SIGKILL took {took:.2f} s"

        agent2 = await fleet.start_agent(cfg_path)
        await fleet.wait_device("kiosk-2", lambda d: d["online"] and d["session"] > first_session, timeout=20)
        second_session = (await fleet.device("kiosk-2"))["session"]

        # The old session's will arrives late (e.g. a broker that noticed the old socket late).
        cfg = load_config(cfg_path)
        late = wire.Envelope.build(wire.Will(session=first_session), src=cfg.peer, dst=cfg.controller, seq=0)
        async with aiomqtt.Client(
            "127.0.0.1",
            fleet.svc.broker.bound_addresses[0][1],  # type: ignore[union-attr]
            identifier="dev-kiosk-2",
            username=cfg.username,
            password=cfg.password,
        ) as c:
            await c.publish(cfg.peer.topic(wire.Channel.PRESENCE), late.encode(), qos=1)
        # The probe took over the agent's client id (the broker fires that session's will too); the
        # agent reconnects on a newer session, which neither will may mark offline.
        await fleet.wait_device(
            "kiosk-2", lambda d: d["online"] and d["session"] > second_session, timeout=20
        )
        dev = await fleet.device("kiosk-2")
        assert dev["online"] is True
        res = await fleet.cli("print", "kiosk-2", "--text", "after restart", "--wait", "--json")
        assert res.json()["state"] == "printed"
        await agent2.stop()


async def test_cli_errors_are_one_line(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    res = await fleet.cli("print", "nope", "--text", "x", check=False)
    assert res.code != 0
    assert res.stderr.strip() == "error: no printer named 'nope'"
    assert "Traceback" not in res.stderr
    res = await fleet.cli("devices", "add", "Bad Name", "--serial", "/dev/ttyUSB0", check=False)
    assert res.code != 0 and "invalid device name" in res.stderr and "Traceback" not in res.stderr
    res = await fleet.cli("devices", "add", "ok-name", "--serial", "ftp://x", check=False)
    assert res.code != 0 and "invalid serial URL" in res.stderr
    listed = json.loads((await fleet.cli("devices", "list", "--json")).stdout)
    assert listed == []  # nothing was created by the refused requests
