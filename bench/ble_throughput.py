"""BLE throughput and connect time of the bridge's printer side: a ~48 KB raster job through
``PrinterConnection`` to the virtual BLE printer, for several pacing settings.

The bridge and the printer are both bumble hosts with real HCI, L2CAP, ATT and GATT. ``local`` puts
them on one in-process ``LocalLink``; ``tcp`` reaches the printer's link through the virtual radio
server (``bumble:tcp-client:127.0.0.1:PORT``, HCI over TCP with H4 framing, as another process
would). The printer has a 1024-byte receive buffer that drops what overflows and prints 8000 B/s:
its drain rate is the limit a job cannot beat, so the ratio column is the job's bytes/s divided by
that drain rate. "exact" means the printer printed the job byte for byte.

Connect time is ``PrinterConnection.open`` entered: find (by address, or by name plus advertised
print service), connect, MTU exchange and service discovery, identity challenge (policy
``required``: signed and verified), median of ``--connects`` runs.

Run: ``.venv/bin/python bench/ble_throughput.py`` (about 2.5 minutes; ``--quick``: local only, about
70 s). Bounded by ``--limit`` seconds (default 300).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phone_bridge.ble import (
    Backend,
    IdentityOutcome,
    Pacing,
    PrinterConnection,
    PrinterTarget,
    open_backend,
)
from phone_bridge.bleak_bumble import BumbleRadio
from phone_bridge.virtual_printer import (
    VirtualPrinter,
    VirtualPrinterConfig,
    VirtualRadioServer,
    public_key_b64,
)

DRAIN = 8000.0
BUFFER = 1024
JOB_BYTES = 48 * 1024
UNIQUE_ID = "bench/printer-1"

#: (label, pacing): the default, fractions of the drain rate (above it too), a gap instead of a rate, none.
SETTINGS: list[tuple[str, Pacing]] = [
    ("default (4000 B/s, barrier every 4)", Pacing()),
    ("50 % of drain, barrier every 4", Pacing(bytes_per_s=0.5 * DRAIN)),
    ("80 % of drain, barrier every 4", Pacing(bytes_per_s=0.8 * DRAIN)),
    ("90 % of drain, barrier every 4", Pacing(bytes_per_s=0.9 * DRAIN)),
    ("90 % of drain, barrier every chunk", Pacing(bytes_per_s=0.9 * DRAIN, barrier_every=1)),
    ("100 % of drain, barrier every 4", Pacing(bytes_per_s=DRAIN)),
    ("120 % of drain, barrier every 4", Pacing(bytes_per_s=1.2 * DRAIN)),
    ("gap 70 ms, no rate ceiling", Pacing(bytes_per_s=None, gap_s=0.070)),
    ("unpaced, barrier every 4", Pacing(bytes_per_s=None)),
]


def raster_job(total: int = JOB_BYTES) -> bytes:
    """A receipt of GS v 0 bands (72 bytes x 14 rows, 1016 bytes each with the header)."""
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
    transport: str
    label: str
    ceiling: float | None
    nbytes: int
    seconds: float
    chunks: int
    barriers: int
    dropped: int
    exact: bool

    @property
    def rate(self) -> float:
        return self.nbytes / self.seconds


@contextlib.asynccontextmanager
async def radio(transport: str, link: LocalLink) -> AsyncIterator[Backend]:
    """The bridge's radio on ``link``: in-process, or through the virtual radio server over TCP."""
    if transport == "local":
        async with BumbleRadio(link) as bumble_radio, open_backend(bumble_radio) as backend:
            yield backend
        return
    async with VirtualRadioServer(link) as server, open_backend(f"bumble:{server.spec}") as backend:
        yield backend


def printer_config(key: Ed25519PrivateKey) -> VirtualPrinterConfig:
    return VirtualPrinterConfig(
        name="MPT-II", buffer_size=BUFFER, drain_bytes_per_s=DRAIN, unique_id=UNIQUE_ID, identity_key=key
    )


def target(config: VirtualPrinterConfig, key: Ed25519PrivateKey, *, by_name: bool) -> PrinterTarget:
    return PrinterTarget(
        name="bench",
        unique_id=UNIQUE_ID,
        ble_address=None if by_name else config.address,
        ble_name=config.name if by_name else None,
        public_key=public_key_b64(key),
        identity="required",
    )


async def throughput(transport: str, job: bytes) -> list[Row]:
    rows: list[Row] = []
    key = Ed25519PrivateKey.generate()
    config = printer_config(key)
    for label, pacing in SETTINGS:
        link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
        async with (
            VirtualPrinter(config, link=link) as printer,
            radio(transport, link) as backend,
            PrinterConnection.open(target(config, key, by_name=False), backend, pacing=pacing) as conn,
        ):
            assert conn.identity is IdentityOutcome.VERIFIED
            result = await conn.write(job)
            await printer.wait_idle(timeout=30)
            row = Row(
                transport=transport,
                label=label,
                ceiling=pacing.bytes_per_s,
                nbytes=result.bytes_written,
                seconds=result.elapsed_s,
                chunks=result.chunks,
                barriers=result.barriers,
                dropped=printer.bytes_dropped,
                exact=bytes(printer.model.raw_printed) == job,
            )
        rows.append(row)
        print(
            f"  {transport:>5} {label:<36} {row.seconds:6.2f} s {row.rate:8,.0f} B/s "
            f"{row.rate / DRAIN:5.0%} dropped {row.dropped}",
            file=sys.stderr,
            flush=True,
        )
    return rows


async def connect_times(transport: str, runs: int, *, by_name: bool) -> list[float]:
    key = Ed25519PrivateKey.generate()
    config = printer_config(key)
    times: list[float] = []
    link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves it unannotated
    async with VirtualPrinter(config, link=link), radio(transport, link) as backend:
        for _ in range(runs):
            started = time.monotonic()
            async with PrinterConnection.open(target(config, key, by_name=by_name), backend) as conn:
                times.append(time.monotonic() - started)
                assert conn.identity is IdentityOutcome.VERIFIED
    return times


async def run(transports: list[str], connects: int) -> None:
    job = raster_job()
    rows: list[Row] = []
    connect: dict[tuple[str, str], list[float]] = {}
    for transport in transports:
        rows += await throughput(transport, job)
        for how, by_name in (("address", False), ("name + service", True)):
            connect[transport, how] = await connect_times(transport, connects, by_name=by_name)

    print(f"\n{len(job):,}-byte raster job through PrinterConnection to the virtual BLE printer")
    print(
        f"({BUFFER} B receive buffer dropping overflow, drain {DRAIN:,.0f} B/s; chunks of 512 B, MTU 517)\n"
    )
    print(
        "| radio | pacing | chunks | barriers | seconds | B/s | of drain | of ceiling | dropped | printed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        of_ceiling = "-" if r.ceiling is None else f"{r.rate / r.ceiling:.0%}"
        print(
            f"| {r.transport} | {r.label} | {r.chunks} | {r.barriers} | {r.seconds:.2f} | {r.rate:,.0f} "
            f"| {r.rate / DRAIN:.0%} | {of_ceiling} | {r.dropped:,} | {'exact' if r.exact else 'WRONG'} |"
        )
    print("\nConnect (find + connect + discover + identity verified), seconds:\n")
    print("| radio | find by | median | min | max | runs |")
    print("|---|---|---|---|---|---|")
    for (transport, how), times in connect.items():
        print(
            f"| {transport} | {how} | {statistics.median(times):.3f} | {min(times):.3f} "
            f"| {max(times):.3f} | {len(times)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the in-process link only")
    parser.add_argument("--connects", type=int, default=10, help="connect-time samples per radio and lookup")
    parser.add_argument("--limit", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args()
    transports = ["local"] if args.quick else ["local", "tcp"]

    async def bounded() -> None:
        async with asyncio.timeout(args.limit):
            await run(transports, args.connects)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        print(f"gave up after {args.limit:g} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
