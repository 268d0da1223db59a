"""Presence: who is online, as the operator sees it in `printfleet devices list`."""

from __future__ import annotations

import asyncio
import signal

import pytest

from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet

KEEPALIVE = 4


async def test_sigkill_offline_within_two_seconds(fleet: Fleet) -> None:
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url, keepalive=KEEPALIVE)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        agent.signal(signal.SIGKILL)
        took = await fleet.wait_device("k1", lambda d: not d["online"], timeout=10)
        assert took < 2.0, f"{fleet.broker_kind}: offline {took:.2f} s after SIGKILL"
        listed = (await fleet.cli("devices", "list", "--json")).json()
        assert listed[0]["online"] is False


async def test_sigstop_offline_within_keepalive_budget_then_back(fleet: Fleet) -> None:
    """A frozen agent (socket open, silent): offline within 1.5x keep-alive + 1 s, back after SIGCONT."""
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k2", printer.url, keepalive=KEEPALIVE)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("k2", lambda d: d["online"] and d["last_heartbeat_at"], timeout=20)
        session = (await fleet.device("k2"))["session"]
        agent.signal(signal.SIGSTOP)
        budget = 1.5 * KEEPALIVE + 1.0
        took = await fleet.wait_device("k2", lambda d: not d["online"], timeout=budget + 5)
        assert took <= budget, f"{fleet.broker_kind}: offline {took:.2f} s after SIGSTOP (budget {budget} s)"
        agent.signal(signal.SIGCONT)
        # Back online: on a new session if the broker dropped the frozen connection meanwhile, or on
        # the same one if the controller's deadline fired first (the heartbeat revives it).
        await fleet.wait_device("k2", lambda d: d["online"] and d["session"] >= session, timeout=30)
        res = await fleet.cli("print", "k2", "--text", "after the freeze", "--wait", "--json")
        assert res.json()["state"] == "printed"
        assert "after the freeze" in (await printer.wait_for_receipts(1, timeout=5))[0].text


@pytest.mark.slow  # a whole fleet, restarted
async def test_controller_restart_keeps_devices(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The controller restarts: agents re-announce themselves and printing continues."""
    from tests.fleet import running_fleet

    async with PtyPrinter() as printer:
        async with running_fleet(tmp_path, "embedded") as fleet:
            cfg = await fleet.add_device("k3", printer.url, keepalive=KEEPALIVE)
            agent = await fleet.start_agent(cfg)
            fleet.agents.clear()  # this test stops the agent itself, whatever happens
            try:
                await fleet.wait_device("k3", lambda d: d["online"], timeout=20)
                port = fleet.svc.broker.bound_addresses[0][1]  # type: ignore[union-attr]
            except BaseException:
                await agent.stop()
                raise
        try:
            # the agent keeps running while the whole controller (and its embedded broker) is down
            async with running_fleet(tmp_path, "embedded", mqtt_bind=("127.0.0.1", port)) as fleet:
                await fleet.wait_device("k3", lambda d: d["online"], timeout=30)
                res = await fleet.cli("print", "k3", "--text", "after controller restart", "--wait", "--json")
                assert res.json()["state"] == "printed"
        finally:
            await asyncio.wait_for(agent.stop(), 15)
