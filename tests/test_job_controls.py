"""Job controls through the real path: priority and order, expiry on the controller's clock,
cancel and clear, payload retention, live watch, reprint of an unknown job."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from device_agent.config import write_config
from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet, running_fleet


async def _online_agent(fleet: Fleet, name: str, url: str, **agent: Any) -> Path:
    cfg = await fleet.add_device(name, url)
    if agent:
        data = tomllib.loads(cfg.read_text())
        data["agent"].update(agent)
        write_config(cfg, data)
    await fleet.start_agent(cfg)
    await fleet.wait_device(name, lambda d: d["online"] and d["latency_ms"] is not None, timeout=20)
    return cfg


async def _job(fleet: Fleet, job_id: str) -> dict[str, Any]:
    return (await fleet.cli("jobs", "show", job_id, "--json")).json()


async def _wait_state(fleet: Fleet, job_id: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await fleet.api("GET", f"/v1/jobs/{job_id}")
        job: dict[str, Any] = resp.json()
        if job["state"] in states:
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} stayed {job['state']}: {job}")
        await asyncio.sleep(0.05)  # observer polling, bounded


async def _submit(fleet: Fleet, printer: str, text: str, **kw: Any) -> str:
    resp = await fleet.api("POST", "/v1/jobs", json={"printer": printer, "text": text, **kw})
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


async def test_priority_then_submission_order(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        await _online_agent(fleet, "k1", printer.url, status_poll_s=0.3)
        printer.set_fault(paper_out=True)
        first = await _submit(fleet, "k1", "low one")
        await _wait_state(fleet, first, {"held"})
        ids = [first]
        ids.append(await _submit(fleet, "k1", "low two"))
        ids.append(await _submit(fleet, "k1", "URGENT", priority=10))
        ids.append(await _submit(fleet, "k1", "low three"))
        for job_id in ids[1:]:
            await _wait_state(fleet, job_id, {"delivered", "held"})  # the head of the queue is held
        printer.clear_faults()
        for job_id in ids:
            await _wait_state(fleet, job_id, {"printed"})
        texts = [r.text for r in await printer.wait_for_receipts(4, timeout=10)]
        order = [
            next(t for t in ("URGENT", "low one", "low two", "low three") if t in text) for text in texts
        ]
        assert order == ["URGENT", "low one", "low two", "low three"]
        held = await _job(fleet, first)
        assert [e["state"] for e in held["events"]].count("held") >= 1
        assert any(e["detail"] == "paper out" for e in held["events"])


async def test_expiry_is_judged_on_the_controller_clock(embedded_fleet: Fleet) -> None:
    """A host clock an hour slow still refuses a stale job; one an hour fast still prints a fresh one."""
    fleet = embedded_fleet
    async with PtyPrinter() as slow_printer, PtyPrinter() as fast_printer:
        await _online_agent(fleet, "slow", slow_printer.url, clock_skew_ms=-3_600_000, status_poll_s=0.3)
        await _online_agent(fleet, "fast", fast_printer.url, clock_skew_ms=+3_600_000, status_poll_s=0.3)

        ok = await _submit(fleet, "fast", "fresh enough", ttl=30)
        assert (await _wait_state(fleet, ok, {"printed", "expired"}))["state"] == "printed"

        slow_printer.set_fault(paper_out=True)
        stale = await _submit(fleet, "slow", "stale receipt", ttl=1.5)
        await _wait_state(fleet, stale, {"held"})
        await asyncio.sleep(2.0)  # let the TTL pass while the printer is out of paper (the scenario itself)
        slow_printer.clear_faults()
        job = await _wait_state(fleet, stale, {"printed", "expired"})
        assert job["state"] == "expired", job
        assert "stale" in (job["detail"] or "")
        marker = await _submit(fleet, "slow", "after the stale one")
        await _wait_state(fleet, marker, {"printed"})
        texts = [r.text for r in slow_printer.model.receipts]
        assert not any("stale receipt" in t for t in texts)
        assert any("after the stale one" in t for t in texts)


async def test_cancel_held_job_and_clear_queue(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        await _online_agent(fleet, "k1", printer.url, status_poll_s=0.3)
        printer.set_fault(cover_open=True)
        held = await _submit(fleet, "k1", "cancel me")
        await _wait_state(fleet, held, {"held"})
        res = await fleet.cli("jobs", "cancel", held)
        assert "cancel requested" in res.stdout
        assert (await _wait_state(fleet, held, {"cancelled", "printed"}))["state"] == "cancelled"

        queued = [await _submit(fleet, "k1", f"clear me {i}") for i in range(3)]
        for job_id in queued:
            await _wait_state(fleet, job_id, {"delivered", "held"})
        res = (await fleet.cli("printers", "clear", "k1", "--json")).json()
        assert res["printer"] == "k1" and len(res["jobs"]) == 3
        for job_id in queued:
            assert (await _wait_state(fleet, job_id, {"cancelled", "printed"}))["state"] == "cancelled"
        printer.clear_faults()
        marker = await _submit(fleet, "k1", "still works")
        await _wait_state(fleet, marker, {"printed"})
        texts = " ".join(r.text for r in printer.model.receipts)
        assert "cancel me" not in texts and "clear me" not in texts and "still works" in texts


@pytest.mark.slow  # a whole fleet
async def test_payload_purged_after_retention_history_kept(tmp_path: Path) -> None:
    async with PtyPrinter() as printer, running_fleet(tmp_path, "embedded", payload_retention_s=1.0) as fleet:
        await _online_agent(fleet, "k1", printer.url)
        job_id = await _submit(fleet, "k1", "personal data: Jane Doe")
        await _wait_state(fleet, job_id, {"printed"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not (job := await _job(fleet, job_id))["payload_purged"]:
            assert loop.time() < deadline, "payload not purged"
            await asyncio.sleep(0.1)  # observer polling, bounded
        assert job["state"] == "printed" and [e["state"] for e in job["events"]][-1] == "printed"
        stored = await fleet.svc.jobs.get(job_id)
        assert stored.payload is None
        res = await fleet.cli("jobs", "reprint", job_id, check=False)
        assert res.code != 0 and "purged" in res.stderr


async def test_jobs_watch_shows_live_transitions(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        await _online_agent(fleet, "k1", printer.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "printfleet",
            "jobs",
            "watch",
            "k1",
            env=fleet.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            hello = await asyncio.wait_for(proc.stderr.readline(), 30)  # connected to the live feed
            assert b"watching" in hello
            job_id = await _submit(fleet, "k1", "watched")
            seen: list[str] = []
            assert proc.stdout is not None
            while "printed" not in seen:
                line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
                assert line, "watch ended early"
                if job_id in line:
                    seen.append(line.split()[-1])
            assert seen[0] == "queued" and "printing" in seen
        finally:
            proc.terminate()
            await proc.wait()


async def test_unknown_job_is_reprinted_only_on_request(embedded_fleet: Fleet) -> None:
    """Agent killed mid-write: the job ends unknown, never reprinted by itself; reprint makes a linked job."""
    import signal

    fleet = embedded_fleet
    async with PtyPrinter(drain_bytes_per_s=2000) as printer:  # a slow printer: the write takes seconds
        cfg = await _online_agent(fleet, "k1", printer.url)
        big = "\n".join(f"line {i:04d} " + "x" * 40 for i in range(400))
        job_id = await _submit(fleet, "k1", big)
        await _wait_state(fleet, job_id, {"printing"})
        agent = fleet.agents[-1]
        agent.signal(signal.SIGKILL)
        await agent.proc.wait()  # type: ignore[union-attr]
        await fleet.start_agent(cfg)
        job = await _wait_state(fleet, job_id, {"unknown", "printed"}, timeout=30)
        assert job["state"] == "unknown" and "may or may not have printed" in job["detail"]
        res = (await fleet.cli("jobs", "reprint", job_id)).stdout
        new_id = res.split()[1]
        new = await _wait_state(fleet, new_id, {"printed"}, timeout=60)
        assert new["reprint_of"] == job_id
        assert (await _job(fleet, job_id))["state"] == "unknown"
