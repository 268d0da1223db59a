"""A simulated ESC/POS printer, for the demo and every end-to-end test: the names in one place,
and the command line.

* :class:`PrinterModel` (:mod:`kernel.sim.model`) is the pure state machine: a bounded receive
  buffer, real-time commands answered on arrival, print data consumed by
  :meth:`~PrinterModel.process` at the speed the caller chooses, faults that hold the data, and
  decoding of what was printed into :class:`Receipt` objects for assertions.
* :class:`PtyPrinter` runs a model on the master side of a pty (its ``url`` is the slave path, which
  pyserial opens); :class:`TcpPrinter` serves one on ``socket://127.0.0.1:PORT``
  (:mod:`kernel.sim.transport`).
* ``python -m kernel.sim.printer --pty`` prints the port and the receipts as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from kernel.sim.model import XOFF, XON, PrinterModel
from kernel.sim.state import BARCODE_NAMES, CODE_PAGES, Faults, Overflow, Receipt
from kernel.sim.transport import PtyPrinter, SimulatedPrinter, TcpPrinter


async def _serve(args: argparse.Namespace) -> None:
    model = PrinterModel(buffer_size=args.buffer, overflow=args.overflow, mute=args.mute)
    if args.tcp:
        async with TcpPrinter(model, drain_bytes_per_s=args.drain) as tcp:
            await _show(tcp, paper_out=args.paper_out)
    else:
        async with PtyPrinter(model, drain_bytes_per_s=args.drain) as pty:
            await _show(pty, paper_out=args.paper_out)


async def _show(printer: SimulatedPrinter, *, paper_out: bool) -> None:
    if paper_out:
        printer.set_fault(paper_out=True)
    print(f"simulated printer at {printer.url}", flush=True)
    seen = 0
    while True:
        receipts = await printer.wait_for_receipts(seen + 1, timeout=None)
        for receipt in receipts[seen:]:
            seen += 1
            print(f"--- receipt {seen} ---\n{receipt.text}\n", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kernel.sim.printer", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a pty (prints its path)")
    where.add_argument("--tcp", action="store_true", help="serve on 127.0.0.1, a free port")
    parser.add_argument("--paper-out", action="store_true", help="start with the paper out")
    parser.add_argument("--drain", type=float, default=None, help="print speed in bytes/s (default: instant)")
    parser.add_argument("--buffer", type=int, default=4096, help="receive buffer size in bytes")
    parser.add_argument("--mute", action="store_true", help="answer nothing (no status, no GS r)")
    parser.add_argument("--overflow", choices=[o.value for o in Overflow], default=Overflow.DROP.value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()


__all__ = [
    "BARCODE_NAMES",
    "CODE_PAGES",
    "XOFF",
    "XON",
    "Faults",
    "Overflow",
    "PrinterModel",
    "PtyPrinter",
    "Receipt",
    "SimulatedPrinter",
    "TcpPrinter",
    "main",
]
