"""The agent's printer link against the simulated printer on real ptys (and TCP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import serial

from device_agent.printer import JobPhase, JobProgress, LinkState, PrinterLink, PrinterLinkError, PrintResult
from kernel.sim.printer import PrinterModel, PtyPrinter, TcpPrinter
from kernel.wire import PrinterSpec

DRAIN = 20_000  # bytes/s: a slow printer
CUT = b"\x1dV\x00"


def raster_job(total: int = 48 * 1024) -> bytes:
    """A receipt of GS v 0 bands (72 bytes x 14 rows = 1016 bytes each with the header)."""
    band_rows = 14
    width = 72
    header = b"\x1dv0\x00" + bytes((width, 0, band_rows, 0))
    bands = []
    size = 0
    i = 0
    while size < total:
        data = bytes((i * 7 + j) % 251 for j in range(width * band_rows))  # not all zero: detects shifts
        bands.append(header + data)
        size += len(header) + len(data)
        i += 1
    return b"\x1b@" + b"".join(bands) + b"\x1bd\x03" + CUT


def spec_for(url: str, **kw: object) -> PrinterSpec:
    return PrinterSpec(name="till-1", serial_url=url, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def slow_printer() -> AsyncIterator[PtyPrinter]:
    async with PtyPrinter(
        PrinterModel(buffer_size=4096, overflow="drop"), drain_bytes_per_s=DRAIN
    ) as printer:
        yield printer


@pytest.mark.slow  # 48 KiB at a paced rate
async def test_paced_48k_raster_job_loses_nothing(
    slow_printer: PtyPrinter, capsys: pytest.CaptureFixture[str]
) -> None:
    job = raster_job()
    progress: list[JobProgress] = []

    async def on_progress(p: JobProgress) -> None:
        progress.append(p)

    async with PrinterLink(spec_for(slow_printer.url), barrier_timeout=2.0) as link:
        state_inside = link.state
        started = time.monotonic()
        outcome = await link.print_job(job, on_progress=on_progress)
        elapsed = time.monotonic() - started
    assert state_inside is LinkState.OPEN
    assert link.state is LinkState.CLOSED
    assert outcome.result is PrintResult.PRINTED, outcome
    assert outcome.bytes_started
    assert outcome.bytes_written == len(job)
    model = slow_printer.model
    assert model.bytes_dropped == 0
    assert bytes(model.payload_printed) == job
    receipts = await slow_printer.wait_for_receipts(1, timeout=1)
    assert receipts[0].lines == (f"[image 576x{14 * 49}]",)
    assert progress[-1].phase is JobPhase.CONFIRMING
    utilisation = len(job) / elapsed / DRAIN
    with capsys.disabled():
        print(
            f"\n[printer-link] 48 KB raster job: {len(job)} bytes in {elapsed:.2f}s = "
            f"{len(job) / elapsed:,.0f} B/s, line utilisation {utilisation:.0%} of the {DRAIN:,} B/s drain"
        )
    assert utilisation > 0.6


async def test_unpaced_write_of_the_same_job_loses_bytes(
    slow_printer: PtyPrinter, capsys: pytest.CaptureFixture[str]
) -> None:
    job = raster_job()

    def naive_write() -> None:
        with serial.serial_for_url(slow_printer.url, write_timeout=5.0) as port:
            port.write(job)
            port.flush()

    await asyncio.to_thread(naive_write)
    await slow_printer.wait_until(lambda m: m.bytes_received >= len(job) and m.buffered == 0, timeout=10)
    model = slow_printer.model
    with capsys.disabled():
        print(f"\n[printer-link] unpaced 48 KB write: {model.bytes_dropped} of {len(job)} bytes lost")
    assert model.bytes_dropped > 0
    assert len(model.raw_printed) + model.bytes_dropped == len(job)
    assert bytes(model.raw_printed) != job


async def _held_then_cleared(printer: PtyPrinter, fault: str, reason: str) -> None:
    job = raster_job(12 * 1024)
    phases: list[tuple[JobPhase, str | None]] = []
    fault_set = False

    async def on_progress(p: JobProgress) -> None:
        nonlocal fault_set
        phases.append((p.phase, p.reason))
        if p.phase is JobPhase.WRITING and p.bytes_sent >= 4096 and not fault_set:
            fault_set = True
            printer.set_fault(**{fault: True})  # type: ignore[arg-type]
        elif p.phase is JobPhase.HELD:
            printer.set_fault(**{fault: False})  # type: ignore[arg-type]

    async with PrinterLink(spec_for(printer.url), barrier_timeout=0.5, hold_poll_interval=0.05) as link:
        outcome = await link.print_job(job, on_progress=on_progress)
    assert outcome.result is PrintResult.PRINTED, outcome
    assert outcome.held == (reason,)
    assert (JobPhase.HELD, reason) in phases
    assert phases.index((JobPhase.HELD, reason)) < phases.index((JobPhase.RESUMED, None))
    # exactly once: nothing resent, nothing lost
    assert bytes(printer.model.payload_printed) == job
    assert printer.model.bytes_dropped == 0
    assert len(printer.model.receipts) == 1


async def test_paper_out_mid_job_is_held_then_printed_once(slow_printer: PtyPrinter) -> None:
    await _held_then_cleared(slow_printer, "paper_out", "paper out")


async def test_cover_open_mid_job_is_held_then_printed_once(slow_printer: PtyPrinter) -> None:
    await _held_then_cleared(slow_printer, "cover_open", "cover open")


async def test_fault_before_the_job_holds_without_writing(slow_printer: PtyPrinter) -> None:
    slow_printer.set_fault(paper_out=True)
    held = asyncio.Event()

    async def on_progress(p: JobProgress) -> None:
        if p.phase is JobPhase.HELD:
            held.set()

    async with PrinterLink(spec_for(slow_printer.url), hold_poll_interval=0.05) as link:
        job_task = asyncio.create_task(link.print_job(b"hello\n" + CUT, on_progress=on_progress))
        await asyncio.wait_for(held.wait(), 2)
        assert slow_printer.model.bytes_received == 3 * 3  # only the DLE EOT queries so far
        health = await link.health()
        assert health.paper == "out"
        assert health.faults == ("paper out",)
        slow_printer.set_fault(paper_out=False)
        outcome = await asyncio.wait_for(job_task, 5)
    assert outcome.result is PrintResult.PRINTED
    assert (await slow_printer.wait_for_receipts(1, 1))[0].text == "hello"


async def test_hold_timeout_fails_the_job(slow_printer: PtyPrinter) -> None:
    async with PrinterLink(
        spec_for(slow_printer.url), barrier_timeout=0.3, hold_poll_interval=0.05, hold_timeout=0.3
    ) as link:
        slow_printer.set_fault(cover_open=True)
        outcome = await link.print_job(b"x\n" + CUT)
    assert outcome.result is PrintResult.FAILED
    assert outcome.reason is not None
    assert "cover open" in outcome.reason
    assert not outcome.bytes_started


async def test_no_status_profile_prints_unconfirmed(slow_printer: PtyPrinter) -> None:
    job = b"\x1b@" + b"line of text\n" * 40 + CUT
    spec = spec_for(slow_printer.url, status_queries=False)
    async with PrinterLink(spec) as link:
        outcome = await link.print_job(job)
    assert outcome.result is PrintResult.PRINTED_UNCONFIRMED
    assert outcome.bytes_started
    receipts = await slow_printer.wait_for_receipts(1, timeout=5)
    assert receipts[0].lines == ("line of text",) * 40
    assert slow_printer.model.bytes_received == len(job)  # no query was sent


async def test_xonxoff_with_a_blocking_printer_loses_nothing() -> None:
    """No status queries: the job is paced by XON/XOFF and the printer's backpressure only."""
    job = raster_job(16 * 1024)
    model = PrinterModel(buffer_size=4096, overflow="block", xonxoff=True)
    async with PtyPrinter(model, drain_bytes_per_s=50_000) as printer:
        spec = spec_for(printer.url, flow_control="xonxoff", status_queries=False)
        async with PrinterLink(spec) as link:
            outcome = await link.print_job(job)
        assert outcome.result is PrintResult.PRINTED_UNCONFIRMED
        await printer.wait_for_receipts(1, timeout=5)
    assert bytes(model.payload_printed) == job
    assert model.bytes_dropped == 0


async def test_gs_paren_h_confirmation() -> None:
    async with PtyPrinter() as printer, PrinterLink(spec_for(printer.url)) as link:
        outcome = await link.print_job(b"tm\n" + CUT, gs_paren_h=True)
        assert outcome.result is PrintResult.PRINTED
        assert outcome.status is not None
        assert outcome.status.paper_end is False
        assert printer.model.receipts[0].text == "tm"


async def test_socket_url_to_tcp_printer() -> None:
    job = raster_job(8 * 1024)
    async with (
        TcpPrinter(PrinterModel(buffer_size=4096), drain_bytes_per_s=100_000) as printer,
        PrinterLink(spec_for(printer.url)) as link,
    ):
        health = await link.health()
        assert health.reachable
        assert health.online
        outcome = await link.print_job(job)
    assert outcome.result is PrintResult.PRINTED
    assert bytes(printer.model.payload_printed) == job


@pytest.fixture
def silent_pty() -> Iterator[str]:
    """A pty whose far end never answers (nobody reads the master)."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("where", ["pty", "loop"])
async def test_dead_port_fails_clearly_within_the_timeout(where: str, silent_pty: str) -> None:
    url = silent_pty if where == "pty" else "loop://"
    async with PrinterLink(spec_for(url), status_timeout=0.3) as link:
        started = time.monotonic()
        with pytest.raises(PrinterLinkError) as info:
            await link.query_status()
        assert time.monotonic() - started < 1.5
        assert info.value.reason.startswith("not responding")
        assert info.value.printer == "till-1"
        assert info.value.retryable
        health = await link.health()
        assert not health.reachable
        assert health.faults == ("not responding",)
        outcome = await link.print_job(b"x\n")
        assert outcome.result is PrintResult.FAILED
        assert not outcome.bytes_started


async def test_cannot_open_a_missing_port() -> None:
    with pytest.raises(PrinterLinkError, match="cannot open") as info:
        async with PrinterLink(spec_for("/dev/printfleet-no-such-port")):
            pass
    assert info.value.retryable


# -- Automatic Status Back ---------------------------------------------------------------------


def realtime_bytes(model: PrinterModel) -> int:
    """Bytes of real-time commands (DLE EOT ...) the printer received."""
    return model.bytes_received - model.bytes_stored


async def test_asb_reports_status_changes_without_polling() -> None:
    async with PtyPrinter() as printer:
        async with PrinterLink(spec_for(printer.url), asb=True) as link:
            changes = link.status_changes()
            first = await asyncio.wait_for(anext(changes), 2)  # the block sent when ASB is enabled
            assert first.faults() == ()
            assert link.asb_active
            queried = realtime_bytes(printer.model)
            printer.set_fault(paper_out=True)
            out = await asyncio.wait_for(anext(changes), 2)
            assert out.faults() == ("paper out",)
            assert link.last_asb == out
            printer.set_fault(paper_out=False, cover_open=True)
            assert (await asyncio.wait_for(anext(changes), 2)).faults() == ("cover open",)
            printer.clear_faults()
            assert (await asyncio.wait_for(anext(changes), 2)).faults() == ()
            assert realtime_bytes(printer.model) == queried == 0  # learnt without a single DLE EOT
            nothing_left = asyncio.create_task(anext(changes, None))
        # the link closed: the iterator ends
        assert await asyncio.wait_for(nothing_left, 2) is None
    # GS a is a status command, not print data
    assert bytes(printer.model.payload_printed) == b""


async def test_without_asb_status_changes_yield_nothing_and_end_on_close() -> None:
    async with PtyPrinter() as printer:
        async with PrinterLink(spec_for(printer.url)) as link:
            pending = asyncio.create_task(anext(link.status_changes(), None))
            printer.set_fault(paper_out=True)
            assert (await link.health()).faults == ("paper out",)
            assert not pending.done()
            assert not link.asb_active
            assert link.last_asb is None
        assert await asyncio.wait_for(pending, 2) is None
    assert realtime_bytes(printer.model) == 4 * 3  # one health read: DLE EOT 1..4


async def test_asb_holds_and_resumes_a_job_at_once(slow_printer: PtyPrinter) -> None:
    """Polling alone would take more than 8 s (barrier_timeout, then hold_poll_interval); ASB acts at once."""
    job = raster_job(12 * 1024)
    phases: list[tuple[JobPhase, str | None]] = []
    fault_set = False

    async def on_progress(p: JobProgress) -> None:
        nonlocal fault_set
        phases.append((p.phase, p.reason))
        if p.phase is JobPhase.WRITING and p.bytes_sent >= 4096 and not fault_set:
            fault_set = True
            slow_printer.set_fault(paper_out=True)
        elif p.phase is JobPhase.HELD:
            slow_printer.set_fault(paper_out=False)

    async with PrinterLink(
        spec_for(slow_printer.url), asb=True, barrier_timeout=8.0, hold_poll_interval=8.0
    ) as link:
        started = time.monotonic()
        outcome = await link.print_job(job, on_progress=on_progress)
        elapsed = time.monotonic() - started
    assert outcome.result is PrintResult.PRINTED, outcome
    assert outcome.held == ("paper out",)
    assert phases.index((JobPhase.HELD, "paper out")) < phases.index((JobPhase.RESUMED, None))
    # without ASB the fault is noticed only when a barrier is 8 s late
    assert elapsed < 8.0, f"held and resumed in {elapsed:.2f} s: ASB was not acted on"
    assert bytes(slow_printer.model.payload_printed) == job
    assert slow_printer.model.bytes_dropped == 0
    assert len(slow_printer.model.receipts) == 1


async def test_mute_printer_answers_nothing_but_prints() -> None:
    async with PtyPrinter(PrinterModel(mute=True)) as printer:
        async with PrinterLink(spec_for(printer.url), status_timeout=0.3) as link:
            assert not (await link.health()).reachable
        async with PrinterLink(spec_for(printer.url, status_queries=False)) as link:
            outcome = await link.print_job(b"one way\n" + CUT)
        assert outcome.result is PrintResult.PRINTED_UNCONFIRMED
        assert (await printer.wait_for_receipts(1, timeout=5))[0].text == "one way"
