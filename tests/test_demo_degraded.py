"""`printfleet demo --degraded` as a user runs it: a real process, bounded, exit 0 only if it worked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # the whole degraded demo as a process
def test_demo_degraded_prints_once_over_ble_and_not_on_the_returning_host(tmp_path: Path) -> None:
    env = dict(os.environ, PRINTFLEET_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("PRINTFLEET_SERVER", None)
    env.pop("PRINTFLEET_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "printfleet", "demo", "--degraded", "--timeout", "40"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    # the steps, in order
    steps = [
        "phone bridge 'phone-1' registered near 'demo' and online",
        "printed by dev-demo (route agent)",
        "host offline",
        "rerouted to bridge phone-1: host demo offline",
        "bridge phone-1 connected to the printer (identity verified",
        "printed over BLE by bridge phone-1 (identity verified)",
        "what the virtual BLE printer printed",
        "host 'demo' online again",
        "printed once, over BLE, and never by the returning host: OK",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), dict(zip(steps, positions, strict=True))
    # the receipt the bridge printed is in the BLE printer's panel, and the counts on both printers
    order = re.search(r"\|\s*(\w{6})\s*\|\s*degraded\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", out.replace("│", "|"))
    assert order is not None, out
    assert (order.group(2), order.group(3)) == ("0", "1")
    assert f"Order {order.group(1)}" in out
