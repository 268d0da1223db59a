"""Printer reality, end to end: faults in the middle of a batch, faults before a job, status words,
printers that cannot answer, and how fast an idle status change reaches `printfleet devices list`.

Everything goes through the real CLI (subprocesses), the HTTP API, the broker, a real agent process,
a real pty and the simulated printer. Waits are bounded polls of the CLI or the API.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device_agent.config import load_config, write_config
from kernel.escpos.status import ErrorKind
from kernel.sim.printer import PrinterModel, PtyPrinter
from tests.fleet import Fleet

Json = Any


async def add_host(fleet: Fleet, name: str, serial_url: str, *, profile: str | None = None) -> Path:
    """`printfleet devices add NAME --serial URL [--profile P]`, journal kept in the test's tmp dir."""
    cfg = fleet.root / f"{name}.agent.toml"
    args = ["devices", "add", name, "--serial", serial_url, "--out", str(cfg)]
    if profile is not None:
        args += ["--profile", profile]
    await fleet.cli(*args)
    data = tomllib.loads(cfg.read_text())
    data["agent"] = {"state_dir": f"{name}-state"}
    write_config(cfg, data)
    loaded = load_config(cfg)
    await fleet.sync_broker_credentials(loaded.username, loaded.password)
    return cfg


async def start_host(fleet: Fleet, name: str, serial_url: str, *, profile: str | None = None) -> None:
    cfg = await add_host(fleet, name, serial_url, profile=profile)
    await fleet.start_agent(cfg)
    await fleet.wait_device(name, lambda d: d["online"] and d["printers"][0]["status"] != "unknown", 20)


async def cli_until(
    fleet: Fleet, args: tuple[str, ...], predicate: Callable[[Json], bool], timeout: float
) -> Json:
    """Run `printfleet ARGS --json` until ``predicate`` holds on its output; bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Json = None
    while loop.time() < deadline:
        last = (await fleet.cli(*args, "--json")).json()
        if predicate(last):
            return last
        await asyncio.sleep(0.1)  # polling interval of an observer, bounded by the deadline
    raise AssertionError(f"printfleet {' '.join(args)} never matched within {timeout} s; last: {last}")


async def api_until(
    fleet: Fleet, path: str, predicate: Callable[[Json], bool], timeout: float, **params: str
) -> Json:
    """Poll ``GET path`` until ``predicate`` holds (cheaper than a CLI process per poll); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Json = None
    while loop.time() < deadline:
        resp = await fleet.api("GET", path, params=params)
        resp.raise_for_status()
        last = resp.json()
        if predicate(last):
            return last
        await asyncio.sleep(0.05)  # polling interval of an observer, bounded by the deadline
    raise AssertionError(f"GET {path} never matched within {timeout} s; last: {last}")


def printer_status(devices: Json, printer: str) -> str | None:
    for d in devices:
        for p in d["printers"]:
            if p["name"] == printer:
                return str(p["status"])
    return None


async def submit(fleet: Fleet, printer: str, text: str) -> str:
    job = (await fleet.cli("print", printer, "--text", text, "--json")).json()
    return str(job["id"])


async def job_show(fleet: Fleet, job_id: str) -> Json:
    return (await fleet.cli("jobs", "show", job_id, "--json")).json()


def history(job: Json) -> list[tuple[str, str | None]]:
    return [(e["state"], e["detail"]) for e in job["events"]]


def realtime_bytes(model: PrinterModel) -> int:
    """Bytes of real-time commands (DLE EOT queries) the printer received."""
    return model.bytes_received - model.bytes_stored


# -- a. paper out in the middle of a batch ------------------------------------------------------


async def test_paper_out_mid_batch_every_job_prints_once(fleet: Fleet) -> None:
    # A slow printer (300 B/s: about 0.1 s per receipt) so the paper can run out in the middle of a job.
    async with PtyPrinter(drain_bytes_per_s=300) as printer:
        await start_host(fleet, "till-a", printer.url)
        markers = [f"batch-receipt-{i:02d}" for i in range(1, 11)]

        async def paper_runs_out() -> int:
            # three receipts are cut and the fourth is being printed (its ESC @ was processed)
            await printer.wait_until(
                lambda m: len(m.receipts) >= 3 and m.raw_printed.count(b"\x1b@") >= 4, timeout=60
            )
            printer.set_fault(paper_out=True)
            return len(printer.model.receipts)

        fault = asyncio.create_task(paper_runs_out())
        ids = await asyncio.gather(*(submit(fleet, "till-a", m) for m in markers))
        printed_before = await fault
        assert printed_before < len(markers)

        def one_held(js: Json) -> bool:
            return any(j["state"] == "held" and j["detail"] == "paper out" for j in js)

        await api_until(fleet, "/v1/jobs", one_held, timeout=30, printer="till-a")
        jobs = await cli_until(fleet, ("jobs", "list", "--printer", "till-a"), one_held, timeout=5)
        (held_id,) = [j["id"] for j in jobs if j["state"] == "held"]
        shown = await job_show(fleet, held_id)
        assert (shown["state"], shown["detail"]) == ("held", "paper out")
        assert len(printer.model.receipts) == printed_before  # nothing printed while out of paper
        assert len(jobs) == len(markers)
        # (a job printed just before the fault may still be reported `printing` here)
        assert sum(j["state"] == "printed" for j in jobs) <= printed_before

        printer.clear_faults()

        def all_printed(js: Json) -> bool:
            return len(js) == len(markers) and all(j["state"] == "printed" for j in js)

        await api_until(fleet, "/v1/jobs", all_printed, timeout=60, printer="till-a")
        await cli_until(fleet, ("jobs", "list", "--printer", "till-a"), all_printed, timeout=5)
        await printer.wait_for_receipts(len(markers), timeout=5)
        text = printer.model.text()
        for marker in markers:
            assert text.count(marker) == 1, f"{marker} printed {text.count(marker)} times"
        assert len(printer.model.receipts) == len(markers)
        assert printer.model.bytes_dropped == 0

        events = history(await job_show(fleet, held_id))
        held_at = events.index(("held", "paper out"))
        assert events[-1] == ("printed", None)
        assert held_at < len(events) - 1
        assert [s for s, _ in events].count("printed") == 1
        for job_id in ids:
            shown = (await fleet.api("GET", f"/v1/jobs/{job_id}")).json()
            assert [s for s, _ in history(shown)].count("printed") == 1


async def test_status_shows_paper_out_while_a_job_is_held_mid_print(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter(drain_bytes_per_s=300) as printer:
        cfg = await add_host(fleet, "till-m", printer.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("till-m", lambda d: printer_status([d], "till-m") == "ready", 20)
        job_id = await submit(fleet, "till-m", "\n".join(f"line {i}" for i in range(200)))
        await printer.wait_until(lambda m: len(m.raw_printed) > 20, timeout=10)  # printing has begun
        printer.set_fault(paper_out=True)
        try:
            await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "held", timeout=10)
            bound = load_config(cfg).status_poll_s + 1.5
            await api_until(
                fleet, "/v1/devices", lambda ds: printer_status(ds, "till-m") == "paper out", timeout=bound
            )
        finally:
            printer.clear_faults()
            await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "printed", timeout=15)


# -- b + e. a fault before the job: held, nothing written; idle status changes reach `devices list` --


async def test_cover_open_before_submission_holds_without_writing(
    embedded_fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await add_host(fleet, "till-b", printer.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("till-b", lambda d: printer_status([d], "till-b") == "ready", 20)
        agent_cfg = load_config(cfg)
        # e: an idle agent reads the printer every status_poll_s and sends a heartbeat at once when
        # the status changed, so `devices list` follows within status_poll_s plus one heartbeat.
        bound = agent_cfg.status_poll_s + agent_cfg.heartbeat_interval + 1.0
        loop = asyncio.get_running_loop()
        took: list[float] = []

        async def idle_change(word: str, **fault: Any) -> None:
            printer.set_fault(**fault)
            started = loop.time()
            await api_until(fleet, "/v1/devices", lambda ds: printer_status(ds, "till-b") == word, bound)
            took.append(loop.time() - started)
            devices = (await fleet.cli("devices", "list", "--json")).json()
            assert printer_status(devices, "till-b") == word

        await idle_change("cover open", cover_open=True)

        job_id = await submit(fleet, "till-b", "after the cover is shut")
        await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "held", timeout=10)
        shown = await job_show(fleet, job_id)
        assert (shown["state"], shown["detail"]) == ("held", "cover open")
        assert printer.model.bytes_stored == 0
        # the agent keeps asking the printer (two more health reads: DLE EOT 1..4 twice) and still
        # writes no byte of the job
        asked = realtime_bytes(printer.model)
        await printer.wait_until(lambda m: realtime_bytes(m) >= asked + 2 * 4 * 3, timeout=10)
        assert printer.model.bytes_stored == 0
        assert printer.model.receipts == []

        printer.set_fault(cover_open=False)
        await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "printed", timeout=10)
        shown = await job_show(fleet, job_id)
        assert (shown["state"], shown["detail"]) == ("printed", None)
        states = history(shown)
        assert states.index(("held", "cover open")) < [s for s, _ in states].index("printing")
        assert [s for s, _ in states].count("printed") == 1
        receipts = await printer.wait_for_receipts(1, timeout=5)
        assert [r.text for r in receipts] == ["after the cover is shut"]

        # c: paper near end is a warning, not a fault: jobs print, and the status says so (read
        # after each job)
        printer.set_fault(paper_near_end=True)
        job = (await fleet.cli("print", "till-b", "--text", "near end", "--wait", "--json")).json()
        assert (job["state"], job["detail"]) == ("printed", None)
        assert (await printer.wait_for_receipts(2, timeout=5))[1].text == "near end"
        near_end = "ready (paper near end)"
        await api_until(fleet, "/v1/devices", lambda ds: printer_status(ds, "till-b") == near_end, 5)
        devices = (await fleet.cli("devices", "list", "--json")).json()
        assert printer_status(devices, "till-b") == near_end
        with capsys.disabled():
            print(
                "\n[printer-reality] idle status change -> devices list: "
                f"{', '.join(f'{t:.2f} s' for t in took)} (bound {bound:.1f} s = status_poll_s "
                f"{agent_cfg.status_poll_s:g} + heartbeat {agent_cfg.heartbeat_interval:g} + 1)"
            )
        assert max(took) < bound


# -- c. offline and errors: held with the reason, then printed once ----------------------------


async def test_offline_and_errors_hold_the_job_with_the_reason(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        await start_host(fleet, "till-c", printer.url)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"offline": True}, "offline"),
            ({"error": ErrorKind.AUTOCUTTER}, "autocutter error"),
            ({"error": ErrorKind.UNRECOVERABLE}, "unrecoverable error"),
            ({"paper_out": True, "cover_open": True}, "paper out, cover open"),
        ]
        for n, (fault, reason) in enumerate(cases, start=1):
            printer.set_fault(**fault)
            stored = printer.model.bytes_stored
            job_id = await submit(fleet, "till-c", f"after the {reason}")
            await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "held", timeout=10)
            shown = await job_show(fleet, job_id)
            assert (shown["state"], shown["detail"]) == ("held", reason)
            devices = await api_until(
                fleet, "/v1/devices", lambda ds, r=reason: printer_status(ds, "till-c") == r, timeout=5
            )
            assert printer_status(devices, "till-c") == reason
            assert printer.model.bytes_stored == stored  # nothing of the job was written

            printer.clear_faults()
            await api_until(fleet, f"/v1/jobs/{job_id}", lambda j: j["state"] == "printed", timeout=10)
            receipts = await printer.wait_for_receipts(n, timeout=5)
            assert receipts[-1].text == f"after the {reason}"
        assert len(printer.model.receipts) == len(cases)


# -- d. a printer that cannot answer ------------------------------------------------------------


async def test_no_status_profile_on_a_mute_printer_prints_unconfirmed(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter(PrinterModel(mute=True)) as mute, PtyPrinter(PrinterModel(mute=True)) as mute2:
        await start_host(fleet, "till-d", mute.url, profile="no-status")
        devices = (await fleet.cli("devices", "list", "--json")).json()
        assert printer_status(devices, "till-d") == "ready"  # assumed: it cannot say otherwise

        job = (await fleet.cli("print", "till-d", "--text", "one-way cable", "--wait", "--json")).json()
        assert job["state"] == "printed"
        assert "unconfirmed" in job["detail"]
        assert [r.text for r in await mute.wait_for_receipts(1, timeout=5)] == ["one-way cable"]
        assert mute.model.bytes_received == mute.model.bytes_stored  # no status query was sent

        # the same mute printer under a profile that expects answers: held, nothing written
        await fleet.cli("printers", "add", "till-d", "till-d2", "--serial", mute2.url)
        job_id = await submit(fleet, "till-d2", "never confirmed")
        await api_until(
            fleet,
            f"/v1/jobs/{job_id}",
            lambda j: (j["state"], j["detail"]) == ("held", "not responding"),
            timeout=15,
        )
        assert mute2.model.bytes_stored == 0
        # (the first "not responding" reaches the controller with the next regular heartbeat)
        bound = load_config(fleet.root / "till-d.agent.toml").heartbeat_interval + 1.0
        await api_until(fleet, "/v1/printers/till-d2", lambda p: p["status"] == "not responding", bound)
        printers = (await fleet.cli("printers", "list", "--json")).json()
        assert {p["name"]: p["status"] for p in printers}["till-d2"] == "not responding"


async def test_asb_profile_reports_a_fault_at_once(embedded_fleet: Fleet) -> None:
    """With Automatic Status Back (epson-tm-t88 profile), an idle printer's fault reaches `devices list`
    without waiting for the 5 s status poll, and a held job resumes as soon as the printer says so."""
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await add_host(fleet, "tm-1", printer.url, profile="epson-tm-t88")
        await fleet.start_agent(cfg)
        await fleet.wait_device("tm-1", lambda d: printer_status([d], "tm-1") == "ready", 20)
        printer.set_fault(paper_out=True)
        took = await fleet.wait_device("tm-1", lambda d: printer_status([d], "tm-1") == "paper out", 10)
        print(f"\n[printer-reality] ASB fault -> devices list: {took:.2f} s (status poll every 5 s)")
        assert took < 2.5
        job_id = await submit(fleet, "tm-1", "asb resume")
        printer.clear_faults()
        job = await fleet.api("GET", f"/v1/jobs/{job_id}/wait", params={"timeout": 30}, timeout=40)
        assert job.json()["state"] == "printed"
