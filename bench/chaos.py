"""The delivery chaos run as a benchmark: many jobs, random SIGKILLs and paper-outs, then the check.

    .venv/bin/python bench/chaos.py --jobs 10000 --broker embedded --seed 1

It runs the harness of ``tests/chaos.py`` (the one the seeded chaos test uses) and prints the
report line: lost / duplicated / unknown jobs, kills by kind (and how many landed inside a write),
paper-out episodes, the time to drain and jobs per second. Exit status 0 only if every rule held.
Results and the process logs stay in ``--workdir`` (a new temporary directory by default).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.chaos import ChaosConfig, report_json, run_chaos  # noqa: E402 - after the path fix above


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=0.0, help="submission pace, jobs/s (0: as fast as possible)")
    p.add_argument("--submitters", type=int, default=4, help="parallel HTTP clients submitting")
    p.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between kills")
    p.add_argument("--paper-out-every", type=float, default=6.0, help="mean seconds between paper-outs")
    p.add_argument(
        "--printer-bps", type=float, default=20_000.0, help="simulated print speed, bytes/s (0: instant)"
    )
    p.add_argument("--filler-lines", type=int, default=2, help="filler lines per job (about 45 bytes each)")
    p.add_argument(
        "--chaos-tail",
        type=float,
        default=3600.0,
        help="after the last submission, keep killing until drained or this many seconds pass",
    )
    p.add_argument("--drain-timeout", type=float, default=600.0)
    p.add_argument(
        "--submit-for",
        type=float,
        default=None,
        help="stop submitting after this many seconds (the report says how many of --jobs went in)",
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"printfleet-chaos-{args.broker}-"))
    config = ChaosConfig(
        workdir=workdir,
        broker=args.broker,
        seed=args.seed,
        jobs=args.jobs,
        submit_rate=args.rate or None,
        submitters=args.submitters,
        kill_every_s=args.kill_every,
        paper_out_every_s=args.paper_out_every,
        printer_bytes_per_s=args.printer_bps or None,
        filler_lines=args.filler_lines,
        chaos_tail_s=args.chaos_tail,
        drain_timeout_s=args.drain_timeout,
        submit_for_s=args.submit_for,
        submit_timeout_s=max(600.0, args.jobs * 0.5),
    )
    report = asyncio.run(run_chaos(config))
    print(report.details())
    if args.json:
        print(report_json(report))
    return 0 if report.ok and report.drained else 1


if __name__ == "__main__":
    sys.exit(main())
