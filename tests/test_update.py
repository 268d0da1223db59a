"""`printfleet cmd update` through the real path: CLI -> API (package upload) -> controller -> broker ->
agent process, which downloads the package from the controller, installs it beside the running
version, restarts into it under the launcher, and is rolled back when the new version cannot start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kernel import __version__
from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet
from tests.wheels import agent_wheel, sha256_of

BROKEN = 'raise ImportError("this build is broken on purpose")\n'


async def _update(fleet: Fleet, wheel: Path, *extra: str, check: bool = True) -> Any:
    res = await fleet.cli(
        "cmd", "update", "k1", "--package", str(wheel), "--sha256", sha256_of(wheel),
        "--wait", "--json", "--timeout", "120", "--health-timeout", "60", *extra,
        check=check, timeout=150,
    )  # fmt: skip
    return res.json()


async def test_update_installs_beside_and_a_broken_update_rolls_back(
    embedded_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        assert (await fleet.device("k1"))["agent_version"] == __version__

        good = agent_wheel(tmp_path, "0.1.1")
        started = time.monotonic()
        done = await _update(fleet, good)
        took_update = time.monotonic() - started
        assert done["state"] == "succeeded", done
        assert done["detail"] == f"{__version__} -> 0.1.1"
        assert done["result"]["old_version"] == __version__ and done["result"]["new_version"] == "0.1.1"
        assert done["args"]["url"].startswith(
            f"/v1/packages/{sha256_of(good)}/printfleet-0.1.1-py3-none-any.whl?"
        )
        assert set(done["args"]) == {"url", "sha256", "version", "health_s"}  # the URL and the hash, no bytes
        # the registry agrees once the new agent's birth (sent before its report, on another topic) is in
        await fleet.wait_device("k1", lambda d: d["agent_version"] == "0.1.1", timeout=10)
        status = (await fleet.cli("cmd", "status", "k1", "--wait", "--json")).json()["result"]
        assert status["agent_version"] == "0.1.1"
        assert agent.proc is not None and status["pid"] != agent.proc.pid  # the launcher's child runs it

        # the sha256 in the signed command is the authority: other bytes behind the URL fail the update
        resp = await fleet.api(
            "POST",
            "/v1/commands",
            json={
                "action": "update",
                "target": "k1",
                "args": {**done["args"], "sha256": "0" * 64},
                "timeout": 60,
            },
        )
        forged = (
            await fleet.api(
                "GET", f"/v1/commands/{resp.json()['commands'][0]['id']}/wait", params={"timeout": 30}
            )
        ).json()
        assert forged["state"] == "failed"
        assert (
            forged["detail"]
            == f"package sha256 mismatch: expected {'0' * 64}, got {sha256_of(good)}; nothing installed"
        )

        broken = agent_wheel(tmp_path, "0.1.2", changes={"printfleet/__init__.py": BROKEN})
        started = time.monotonic()
        back = await _update(fleet, broken, check=False)
        took_rollback = time.monotonic() - started
        assert back["state"] == "failed", back
        assert back["detail"] == "rolled back: version 0.1.2 exited with code 1 before reporting healthy"
        assert back["result"]["attempted_version"] == "0.1.2" and back["result"]["new_version"] == "0.1.1"
        await fleet.wait_device("k1", lambda d: d["agent_version"] == "0.1.1", timeout=10)  # not the base
        job = (await fleet.cli("print", "k1", "--text", "after the rollback", "--wait", "--json")).json()
        assert job["state"] == "printed"
        print(
            f"\n[update] cmd update --wait through the CLI (upload, download, install, restart, confirm):"
            f" {took_update:.1f} s; a broken build rolled back: {took_rollback:.1f} s"
        )

        # on the host: both installs are kept, and an operator may go back to any by hand
        versions = (await fleet.cli("agent", "versions", "--config", str(cfg), "--json")).json()
        assert sorted(i["version"] for i in versions["installs"]) == ["0.1.1", "0.1.2"]
        assert versions["current"] == done["result"]["install"] and versions["trial"] is None
        await fleet.cli("agent", "versions", "--config", str(cfg), "--use", "base")
        await fleet.cli("cmd", "restart-agent", "k1", "--wait", "--timeout", "60")
        await fleet.wait_device("k1", lambda d: d["agent_version"] == __version__, timeout=10)

        packages = (await fleet.api("GET", "/v1/packages")).json()
        assert sorted(p["version"] for p in packages) == ["0.1.1", "0.1.2"]  # each uploaded once
        again = await fleet.cli(
            "cmd", "update", "k1", "--package", str(good), "--sha256", "f" * 64, check=False
        )
        assert again.code == 1 and f"hashes to {sha256_of(good)}, not the --sha256 given" in again.stderr
        foreign = await fleet.cli(
            "cmd", "update", "k1", "--package", "http://198.51.100.7/p.whl", "--sha256", "a" * 64, check=False
        )
        assert (
            foreign.code == 1 and "agents download only over https or from this controller" in foreign.stderr
        )
        grant = done["args"]["url"].replace("grant=", "grant=0")[:-1]
        stolen = await fleet.api("GET", grant)  # a grant that does not verify opens nothing
        assert stolen.status_code == 403
