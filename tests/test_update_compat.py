"""Hosts already in the field keep working: an agent of the previous release (the layout before the
kernel, ``printfleet/wire.py`` and all) is updated to a wheel of this checkout through the real path,
comes back healthy as the new version, and goes back to the old release: by hand, and by itself when a
new build cannot start.

The previous release is the tree of :data:`OLD_RELEASE` from this clone's history, installed as a
host's base environment would be: a virtual environment whose site-packages holds that tree and the
test environment's dependencies (not this checkout). Its own launcher, updater and version store run
the update; the new version must read that store, confirm its trial and speak to today's controller.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kernel.sim.printer import PtyPrinter
from tests.fleet import AgentProcess, Fleet
from tests.wheels import REPO, agent_wheel, sha256_of

#: The last commit of the layout before the kernel: what hosts in the field run.
OLD_RELEASE = "7b782f8"
OLD_VERSION = "0.1.0"
NEW_VERSION = "0.2.0"
BROKEN = 'raise ImportError("this build is broken on purpose")\n'


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs in a clone, which has the history)")
    pytest.skip(reason)


def _old_release_tree(dest: Path) -> Path:
    git = shutil.which("git")
    if git is None:
        _unavailable("git is not installed: the previous release is read from the history")
    packages = ["printfleet", "device_agent", "broker", "cloud", "phone_bridge"]
    done = subprocess.run(
        [str(git), "-C", str(REPO), "archive", "--format=tar", OLD_RELEASE, *packages],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        _unavailable(f"commit {OLD_RELEASE} is not in this checkout: {done.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / "printfleet" / "wire.py").exists()  # the old layout indeed
    return dest


def _base_environment(root: Path) -> Path:
    """A host's base environment with the previous release installed; its python."""
    tree = _old_release_tree(root / "old-release")
    venv = root / "host-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    # The release first; then the dependencies from this environment's site-packages, added as plain
    # paths so that its .pth files (the editable install of this checkout) are not processed.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "00-printfleet-old-release.pth").write_text(f"{tree}\n")
    (Path(site) / "01-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    probe = "import printfleet, importlib.util as u; print(printfleet.__file__, u.find_spec('kernel'))"
    check = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=_host_env(),
        cwd=root,  # not this checkout: ``-c`` and ``-m`` put the working directory on sys.path
    )
    assert check.stdout.split() == [str(tree / "printfleet" / "__init__.py"), "None"], check
    return python


def _host_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRINTFLEET_HOME")}


@dataclass
class HostAgent(AgentProcess):
    """``python -m printfleet agent run`` of the host's base environment, as its systemd unit starts it."""

    python: Path = Path(sys.executable)

    async def start(self) -> None:
        fh = open(self.log, "ab")  # noqa: SIM115, ASYNC230 - a local log file handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.python), "-m", "printfleet", "agent", "run", "--config", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=fh,
                env=_host_env(), cwd=self.config.parent,
            )  # fmt: skip
        finally:
            fh.close()


async def _update(fleet: Fleet, wheel: Path, *, check: bool = True) -> Any:
    res = await fleet.cli(
        "cmd", "update", "k1", "--package", str(wheel), "--sha256", sha256_of(wheel),
        "--wait", "--json", "--timeout", "120", "--health-timeout", "60",
        check=check, timeout=150,
    )  # fmt: skip
    return res.json()


async def _prints(fleet: Fleet, printer: PtyPrinter, text: str) -> None:
    job = (await fleet.cli("print", "k1", "--text", text, "--wait", "--json", timeout=90)).json()
    assert job["state"] == "printed", job
    await printer.wait_until(lambda model: text in model.text(), 10)


@pytest.mark.full
@pytest.mark.timeout(300)
async def test_an_agent_of_the_previous_release_updates_and_rolls_back(
    embedded_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = embedded_fleet
    host_python = _base_environment(tmp_path)
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        agent = HostAgent(config=cfg, log=cfg.with_suffix(".log"), python=host_python)
        await agent.start()
        fleet.agents.append(agent)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=30)
        assert (await fleet.device("k1"))["agent_version"] == OLD_VERSION
        await _prints(fleet, printer, "printed by the previous release")

        # the previous release's updater installs this checkout beside itself; its launcher runs it
        new = agent_wheel(tmp_path, NEW_VERSION)
        done = await _update(fleet, new)
        assert done["state"] == "succeeded", (done, agent.log_text()[-3000:])
        assert done["detail"] == f"{OLD_VERSION} -> {NEW_VERSION}"
        await fleet.wait_device("k1", lambda d: d["agent_version"] == NEW_VERSION, timeout=15)
        await _prints(fleet, printer, "printed by the new version")

        # on the host, the old release's own command goes back to the base environment
        argv = [str(host_python), "-m", "printfleet", "agent", "versions", "--config", str(cfg)]
        argv += ["--use", "base"]
        use_base = await asyncio.create_subprocess_exec(
            *argv, env=_host_env(), cwd=cfg.parent,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        said, _ = await asyncio.wait_for(use_base.communicate(), 60)
        back = (use_base.returncode, said.decode())
        assert back[0] == 0, back
        await fleet.cli("cmd", "restart-agent", "k1", "--wait", "--timeout", "60")
        await fleet.wait_device("k1", lambda d: d["agent_version"] == OLD_VERSION, timeout=15)
        await _prints(fleet, printer, "printed by the previous release again")

        # a new build that cannot start is rolled back to the previous release by its launcher
        broken = agent_wheel(tmp_path, "0.2.1", changes={"printfleet/__init__.py": BROKEN})
        failed = await _update(fleet, broken, check=False)
        assert failed["state"] == "failed", failed
        assert failed["detail"] == "rolled back: version 0.2.1 exited with code 1 before reporting healthy"
        await fleet.wait_device("k1", lambda d: d["agent_version"] == OLD_VERSION, timeout=15)
        await _prints(fleet, printer, "still printed by the previous release")

        # today's command line reads the store the previous release and the new version wrote
        versions = (await fleet.cli("agent", "versions", "--config", str(cfg), "--json")).json()
        assert sorted(i["version"] for i in versions["installs"]) == [NEW_VERSION, "0.2.1"]
        assert versions["current"] is None and versions["trial"] is None
