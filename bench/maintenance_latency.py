"""How long `printfleet cmd logs DEVICE --wait` takes on loopback, and where the time goes.

Starts a controller (embedded broker) and an agent process on a simulated pty printer, then times
N `logs` commands through the HTTP API (submit + long-poll until done), and a few through the CLI
itself (which adds the Python start-up of the `printfleet` command). Prints median and p95.

    python bench/maintenance_latency.py [--n 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.sim.printer import PtyPrinter
from tests.fleet import running_fleet


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pf-maint-") as tmp:
        async with running_fleet(Path(tmp), "embedded") as fleet, PtyPrinter() as printer:
            cfg = await fleet.add_device("k1", printer.url)
            await fleet.start_agent(cfg)
            await fleet.wait_device("k1", lambda d: d["online"], timeout=30)
            api: list[float] = []
            for _ in range(n):
                started = time.perf_counter()
                resp = await fleet.api(
                    "POST", "/v1/commands", json={"action": "logs", "target": "k1", "args": {"lines": 50}}
                )
                cid = resp.json()["commands"][0]["id"]
                done = await fleet.api("GET", f"/v1/commands/{cid}/wait", params={"timeout": 30}, timeout=40)
                assert done.json()["state"] == "succeeded", done.json()
                assert done.json()["result"]["lines"]
                api.append(time.perf_counter() - started)
            cli: list[float] = []
            for _ in range(5):
                started = time.perf_counter()
                await fleet.cli("cmd", "logs", "k1", "--lines", "50", "--wait")
                cli.append(time.perf_counter() - started)
    print(
        f"cmd logs through the HTTP API (submit + wait), n={n}: "
        f"median {statistics.median(api) * 1000:.0f} ms, p95 {pct(api, 0.95) * 1000:.0f} ms"
    )
    print(
        f"printfleet cmd logs --wait (the CLI, incl. Python start-up), n=5: "
        f"median {statistics.median(cli) * 1000:.0f} ms, max {max(cli) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30)
    asyncio.run(main(parser.parse_args().n))
