"""The agent's launcher: runs the selected install of the agent and rolls back a failed trial.

Until an update is installed, ``printfleet agent run`` runs the agent in its own process, as
always. Once the host has a version store (:mod:`device_agent.versions`), ``printfleet agent run``
stays in the base environment as a small supervisor and starts the agent as a child process
from the chosen install (that directory first on ``PYTHONPATH``; ``-P`` keeps the working
directory off ``sys.path``). The supervisor never imports an installed version's code, so a
broken version cannot take the way back down with it.

* The child exits with :data:`RESTART_EXIT` to be started again (a restart command, an update).
* While an install is on trial, the child exiting (any other code) or the health deadline passing
  without the child confirming rolls the trial back, and the previous install is started.
* SIGINT/SIGTERM are passed on to the child; the supervisor exits with the child's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from device_agent.config import AgentConfig
from device_agent.update import versions_dir
from device_agent.versions import Boot, VersionStore
from kernel import wire
from kernel.signals import wait_for_signal

log = logging.getLogger(__name__)

#: The exit code with which a supervised agent asks to be started again.
RESTART_EXIT = 75
#: Set in a supervised agent's environment (it then exits to restart instead of re-executing).
CHILD_ENV = "PRINTFLEET_AGENT_SUPERVISED"
STOP_GRACE_S = 15.0


def supervised_child() -> bool:
    """True in an agent started by the launcher."""
    return os.environ.get(CHILD_ENV) == "1"


def should_supervise(config: AgentConfig) -> bool:
    """True when `agent run` must supervise: an update was installed here, and this is not the child."""
    return not supervised_child() and VersionStore(versions_dir(config.state_dir)).exists()


def child_command(config_path: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "printfleet", "agent", "run", "--config", str(config_path)]


class Launcher:
    """Starts the chosen install as a child, again and again, and judges trials (module docstring)."""

    def __init__(
        self, store: VersionStore, config_path: Path, *, command: Sequence[str] | None = None
    ) -> None:
        self.store = store
        self.config_path = config_path
        self.command = list(command) if command is not None else child_command(config_path)

    async def run(self) -> int:
        stop = asyncio.create_task(wait_for_signal(), name="launcher-signals")
        try:
            while True:
                boot = await asyncio.to_thread(self.store.boot, wire.now_ms())
                code = await self._run_child(boot, stop)
                if code is None:
                    continue  # start again (a restart, or back to the previous version)
                return code
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop

    async def _run_child(self, boot: Boot, stop: asyncio.Task[str]) -> int | None:
        env = dict(os.environ)
        env[CHILD_ENV] = "1"
        env.pop("PYTHONPATH", None)
        if boot.install is not None:
            env["PYTHONPATH"] = str(boot.install.path)
        what = "the base environment" if boot.install is None else f"version {boot.install.version}"
        log.info("starting the agent from %s%s", what, " (on trial)" if boot.trial else "")
        proc = await asyncio.create_subprocess_exec(*self.command, env=env, stdin=asyncio.subprocess.DEVNULL)
        exited = asyncio.create_task(proc.wait(), name="launcher-child")
        try:
            while True:
                timeout = None
                if boot.trial is not None and boot.trial.deadline is not None:
                    timeout = max(0.0, (boot.trial.deadline - wire.now_ms()) / 1000)
                done, _ = await asyncio.wait({exited, stop}, timeout=timeout, return_when="FIRST_COMPLETED")
                if stop in done:
                    return await self._stop(proc, exited)
                if exited in done:
                    code = exited.result()
                    if boot.trial is not None and await self._on_trial(boot.trial.command_id):
                        await asyncio.to_thread(
                            self.store.fail_trial,
                            f"version {boot.trial.version} exited with code {code} before reporting healthy",
                            wire.now_ms(),
                        )
                        return None
                    return None if code == RESTART_EXIT else code
                # the health deadline passed: confirmed meanwhile, or rolled back now
                assert boot.trial is not None
                if await self._on_trial(boot.trial.command_id):
                    trial = boot.trial
                    late = f"version {trial.version} did not report healthy within {trial.health_s:g} s"
                    await asyncio.to_thread(self.store.fail_trial, late, wire.now_ms())
                    await self._stop(proc, exited)
                    return None
                boot = Boot(install=boot.install)  # confirmed: no deadline any more
        finally:
            if proc.returncode is None:
                await self._stop(proc, exited)

    async def _on_trial(self, command_id: str) -> bool:
        """The trial this child was started for is still undecided."""
        trial = await asyncio.to_thread(self.store.trial)
        return trial is not None and trial.command_id == command_id

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> int:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
            except TimeoutError:
                log.warning("the agent did not stop within %.0f s; killing it", STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        return await exited


async def supervise(config: AgentConfig, config_path: Path) -> int:
    """`printfleet agent run` on a host with installs: run the chosen one until stopped."""
    return await Launcher(VersionStore(versions_dir(config.state_dir)), config_path).run()
