"""Remote maintenance through the real path: CLI -> API -> controller -> broker -> agent process."""

from __future__ import annotations

import asyncio
import signal
import time
import tomllib
from typing import Any

from device_agent.config import write_config
from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet


async def _agent(fleet: Fleet, name: str, url: str, **maintenance: str) -> Any:
    cfg = await fleet.add_device(name, url)
    if maintenance:
        data = tomllib.loads(cfg.read_text())
        data["maintenance"] = maintenance
        write_config(cfg, data)
    agent = await fleet.start_agent(cfg)
    await fleet.wait_device(name, lambda d: d["online"], timeout=20)
    return cfg, agent


async def test_every_quick_action(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        await _agent(fleet, "k1", printer.url)
        res = (await fleet.cli("cmd", "ping", "k1", "--wait", "--json")).json()
        assert res["state"] == "succeeded" and res["result"]["pong"] is True
        status = (await fleet.cli("cmd", "status", "k1", "--wait", "--json")).json()["result"]
        assert status["agent_version"] and status["boot_id"] and status["disk"]["free"] > 0
        assert status["printers"]["k1"]["reachable"] is True

        started = time.monotonic()
        logs = await fleet.cli("cmd", "logs", "k1", "--lines", "50", "--wait")
        took = time.monotonic() - started
        assert "connected to mqtt://" in logs.stdout
        print(f"\n[maintenance] cmd logs --wait round trip through the CLI: {took:.2f} s")

        got = (await fleet.cli("cmd", "config-get", "k1", "--wait", "--json")).json()["result"]["settings"]
        assert set(got) >= {"heartbeat_s", "status_poll_s", "log_level"}
        ok = (
            await fleet.cli(
                "cmd", "config-set", "k1", "status_poll_s=2", "log_level=debug", "--wait", "--json"
            )
        ).json()
        assert ok["state"] == "succeeded" and ok["result"]["applied"] == {
            "status_poll_s": "2",
            "log_level": "debug",
        }
        bad = await fleet.cli("cmd", "config-set", "k1", "status_poll_s=0", "--wait", "--json", check=False)
        assert bad.code == 1 and bad.json()["state"] == "rejected" and "between" in bad.json()["detail"]
        again = (await fleet.cli("cmd", "config-get", "k1", "status_poll_s", "--wait", "--json")).json()
        assert again["result"]["settings"] == {"status_poll_s": 2.0}  # the refused change changed nothing

        st = (await fleet.cli("cmd", "printer-status", "k1", "--wait", "--json")).json()
        assert st["result"]["printers"]["k1"]["paper"] == "ok"
        drawer = (await fleet.cli("cmd", "open-drawer", "k1", "--wait", "--json")).json()
        assert drawer["state"] == "succeeded"
        assert "[drawer]" in printer.model.text()
        selftest = (await fleet.cli("cmd", "printer-selftest", "k1", "--wait", "--json")).json()
        assert selftest["state"] == "succeeded"
        none = await fleet.cli("cmd", "reboot", "k1", "--wait", "--json", check=False)
        assert none.json()["state"] == "rejected" and "not configured" in none.json()["detail"]
        listed = (await fleet.cli("cmd", "list", "--json")).json()
        assert len(listed) >= 10 and all(c["device"] == "k1" for c in listed)
        shown = (await fleet.cli("cmd", "show", res["id"], "--json")).json()
        assert [e["state"] for e in shown["events"]][:2] == ["queued", "sent"]
        assert shown["events"][-1]["state"] == "succeeded"
        assert shown["result"]["agent_audit"] == []  # the first command: the agent's audit log was empty
        audit = none.json()["result"]["agent_audit"]  # later results carry the agent's recent audit lines
        assert audit and {"at", "command_id", "action", "requested_by", "outcome"} <= set(audit[0])
        assert audit[0]["requested_by"] == "api:local-admin"


async def test_offline_device_runs_the_command_when_it_returns(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg, agent = await _agent(fleet, "k1", printer.url)
        await agent.stop()
        await fleet.wait_device("k1", lambda d: not d["online"], timeout=10)
        queued = (await fleet.cli("cmd", "ping", "k1", "--json")).json()
        assert queued["state"] == "queued"
        await fleet.start_agent(cfg)
        resp = await fleet.api("GET", f"/v1/commands/{queued['id']}/wait", params={"timeout": 30}, timeout=40)
        assert resp.json()["state"] == "succeeded"


async def test_restart_agent_completes_after_the_restart(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        _cfg, agent = await _agent(fleet, "k1", printer.url)
        before = await fleet.device("k1")
        res = (await fleet.cli("cmd", "restart-agent", "k1", "--wait", "--json", "--timeout", "60")).json()
        assert res["state"] == "succeeded", res
        assert res["result"]["previous_boot_id"] == before["boot_id"]
        assert res["result"]["boot_id"] != before["boot_id"]
        assert res["result"]["session"] > before["session"]
        assert agent.proc is not None and agent.proc.returncode is None  # the same process, re-executed
        job = (await fleet.cli("print", "k1", "--text", "after restart", "--wait", "--json")).json()
        assert job["state"] == "printed"


async def test_agent_killed_mid_command_runs_it_at_most_once(embedded_fleet: Fleet, tmp_path: Any) -> None:
    """The host command is killed with the agent: the record ends failed, and it never runs again."""
    fleet = embedded_fleet
    marker = tmp_path / "ran"
    async with PtyPrinter() as printer:
        cfg, agent = await _agent(fleet, "k1", printer.url, reboot_command=f"echo x >> {marker}; sleep 30")
        queued = (await fleet.cli("cmd", "reboot", "k1", "--json", "--timeout", "120")).json()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not marker.exists():
            assert loop.time() < deadline
            await asyncio.sleep(0.05)  # observer polling, bounded
        agent.signal(signal.SIGKILL)
        await agent.proc.wait()  # type: ignore[union-attr]
        await fleet.start_agent(cfg)
        resp = await fleet.api("GET", f"/v1/commands/{queued['id']}/wait", params={"timeout": 30}, timeout=40)
        final = resp.json()
        # a reboot that did not reboot: the agent came back with a new boot id (its own), which is
        # the confirmation the lifecycle asks for; the command ran exactly once
        assert final["state"] in ("succeeded", "failed"), final
        await fleet.cli("cmd", "ping", "k1", "--wait")  # the agent is healthy afterwards
        assert marker.read_text().count("x") == 1
