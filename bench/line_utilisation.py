"""Line utilisation of the paced printer link: a 48 KB raster job through PrinterLink to the simulated
printer on a real pty, for several print (drain) rates and chunk/window settings.

The simulated printer has a 4 KB receive buffer that drops what overflows (as real printers do) and
prints ``drain`` bytes per second: baud / 10 for 8N1 (9600 baud -> 960 B/s). A pty itself has no
baud rate, so the drain rate is the line's bottleneck here, as the printer is on a real serial line.
Utilisation is the job's bytes per second divided by the drain rate: 100 % means the link kept the
printer busy all the time. The last column writes the same job in one unpaced ``write`` (no GS r
barriers) and counts the bytes the printer dropped.

Run: ``.venv/bin/python bench/line_utilisation.py`` (about 2.5 minutes; ``--quick`` skips 9600 and
19200 baud, about 1 minute). Bounded by ``--limit`` seconds (default 175).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import serial

from device_agent.printer import PrinterLink, PrintResult
from kernel.sim.printer import PrinterModel, PtyPrinter
from kernel.wire import PrinterSpec

BUFFER = 4096
JOB_BYTES = 48 * 1024


def raster_job(total: int = JOB_BYTES) -> bytes:
    """A receipt of GS v 0 bands (72 bytes x 14 rows = 1016 bytes each with the header)."""
    header = b"\x1dv0\x00" + bytes((72, 0, 14, 0))
    bands: list[bytes] = []
    size = i = 0
    while size < total:
        band = header + bytes((i * 7 + j) % 251 for j in range(72 * 14))
        bands.append(band)
        size += len(band)
        i += 1
    return b"\x1b@" + b"".join(bands) + b"\x1bd\x03\x1dV\x00"


@dataclass(frozen=True, kw_only=True)
class Row:
    label: str
    drain: float | None
    chunk: int
    window: int
    nbytes: int
    seconds: float
    lost: int
    result: str

    @property
    def rate(self) -> float:
        return self.nbytes / self.seconds

    @property
    def utilisation(self) -> str:
        return "-" if self.drain is None else f"{self.rate / self.drain:.0%}"


async def paced(label: str, drain: float | None, chunk: int, window: int, job: bytes) -> Row:
    model = PrinterModel(buffer_size=BUFFER, overflow="drop")
    async with PtyPrinter(model, drain_bytes_per_s=drain) as printer:
        spec = PrinterSpec(name="bench", serial_url=printer.url, chunk_size=chunk, window=window)
        async with PrinterLink(spec, barrier_timeout=5.0) as link:
            started = time.monotonic()
            outcome = await link.print_job(job)
            seconds = time.monotonic() - started
        await printer.wait_until(lambda m: len(m.receipts) >= 1, timeout=5)
    ok = outcome.result is PrintResult.PRINTED and bytes(model.payload_printed) == job
    return Row(
        label=label,
        drain=drain,
        chunk=chunk,
        window=window,
        nbytes=len(job),
        seconds=seconds,
        lost=model.bytes_dropped,
        result="exact" if ok else f"WRONG ({outcome.result})",
    )


async def unpaced_loss(drain: float | None, job: bytes) -> int:
    """Bytes the printer dropped when the job is written in one go, without pacing."""
    model = PrinterModel(buffer_size=BUFFER, overflow="drop")
    async with PtyPrinter(model, drain_bytes_per_s=drain) as printer:

        def write() -> None:
            with serial.serial_for_url(printer.url, write_timeout=10.0) as port:
                port.write(job)
                port.flush()

        await asyncio.to_thread(write)
        await printer.wait_until(lambda m: m.bytes_received >= len(job) and m.buffered == 0, timeout=60)
    return model.bytes_dropped


def fmt_rate(drain: float | None) -> str:
    return "unthrottled" if drain is None else f"{drain:,.0f} B/s"


async def run(quick: bool) -> None:
    job = raster_job()
    bauds = [38400, 115200] if quick else [9600, 19200, 38400, 115200]
    drains: list[tuple[str, float | None]] = [(f"{b} baud", b / 10) for b in bauds]
    drains.append(("unthrottled", None))
    settings = [(1024, 3), (512, 2), (2048, 4), (4096, 1)]
    rows: list[Row] = []
    losses: dict[str, int] = {}
    for label, drain in drains:
        # every setting where it is quick; 2048 x 4 (8 KB in flight, twice the buffer) only where
        # its failure costs little time
        if drain is None or drain >= 11520:
            chosen = settings
        elif drain >= 3840:
            chosen = [s for s in settings if s != (2048, 4)]
        else:
            chosen = settings[:1]
        for chunk, window in chosen:
            row = await paced(label, drain, chunk, window, job)
            rows.append(row)
            print(
                f"  {label:>12}  chunk {chunk:>4} window {window}: {row.seconds:6.2f} s "
                f"{row.utilisation:>5} lost {row.lost} {row.result}",
                file=sys.stderr,
                flush=True,
            )
        losses[label] = await unpaced_loss(drain, job)

    print(f"\n48 KB raster job ({len(job):,} bytes) through PrinterLink to the simulated printer")
    print(f"(pty, {BUFFER} B receive buffer that drops on overflow)\n")
    print("| line | drain | chunk | window | bytes | seconds | B/s | utilisation | lost | payload |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.label} | {fmt_rate(r.drain)} | {r.chunk} | {r.window} | {r.nbytes:,} | {r.seconds:.2f} "
            f"| {r.rate:,.0f} | {r.utilisation} | {r.lost} | {r.result} |"
        )
    print("\nThe same job written in one unpaced write (no barriers):\n")
    print("| line | drain | bytes lost | of |")
    print("|---|---|---|---|")
    for label, drain in drains:
        lost = losses[label]
        print(f"| {label} | {fmt_rate(drain)} | {lost:,} ({lost / len(job):.0%}) | {len(job):,} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip 9600 and 19200 baud")
    parser.add_argument("--limit", type=float, default=175.0, help="give up after this many seconds")
    args = parser.parse_args()

    async def bounded() -> None:
        async with asyncio.timeout(args.limit):
            await run(args.quick)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        print(f"gave up after {args.limit:g} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
