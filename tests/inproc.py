"""Many real device agents in the test's own event loop, for fleet-scale tests (rollouts).

Each host is a real :class:`device_agent.agent.Agent` with its own journal and MQTT session on the
controller's broker. Two things are stood in for:

* the printer, by an always-ready port (the hardware edge; no job is printed in these tests);
* the launcher process, by :meth:`InProcessHost.run`: it asks the host's version store what to
  start (the same :meth:`~device_agent.versions.VersionStore.boot` decision the launcher makes)
  and starts a new ``Agent`` announcing that install's version. The code is this checkout's in
  every case; what differs is the version the agent announces, which is what a rollout judges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from device_agent.agent import Agent
from device_agent.config import AgentConfig, parse_config
from device_agent.printer import PrintOutcome
from device_agent.update import versions_dir
from device_agent.versions import VersionStore
from kernel import __version__, wire
from tests.fleet import Fleet


class ReadyPrinter:
    """A printer port that is always ready (a :class:`device_agent.worker.PrinterPort`)."""

    async def health(self) -> wire.PrinterHealth:
        return wire.PrinterHealth(reachable=True, online=True, paper="ok", checked_at=wire.now_ms())

    async def status_changes(self) -> AsyncGenerator[wire.PrinterHealth, None]:
        await asyncio.Event().wait()
        yield await self.health()  # pragma: no cover - never reached

    async def print_job(
        self,
        data: bytes,
        *,
        on_held: Callable[[str], Awaitable[None]],
        on_resumed: Callable[[], Awaitable[None]],
    ) -> PrintOutcome:
        raise NotImplementedError("the in-process hosts do not print")


@contextlib.asynccontextmanager
async def ready_port(_spec: wire.PrinterSpec) -> AsyncIterator[ReadyPrinter]:
    yield ReadyPrinter()


@dataclass
class InProcessHost:
    config: AgentConfig
    #: The versions this host's agent announced, one per start.
    started: list[str] = field(default_factory=list)
    agent: Agent | None = None

    @property
    def name(self) -> str:
        return self.config.device

    async def run(self) -> None:
        """Start the agent, and start it again (from the chosen install) whenever it asks to restart."""
        store = VersionStore(versions_dir(self.config.state_dir))
        while True:
            version = __version__
            if store.exists():  # as the launcher: an install on trial, or the current one
                boot = await asyncio.to_thread(store.boot, wire.now_ms())
                version = boot.version or __version__
            self.agent = Agent(self.config, port_factory=ready_port, version=version)
            self.started.append(version)
            await self.agent.run()
            if not self.agent.restart_requested:
                return


def host_state_dir(fleet: Fleet, name: str) -> Path:
    return fleet.root / "hosts" / name


@contextlib.asynccontextmanager
async def in_process_hosts(
    fleet: Fleet, api: httpx.AsyncClient, names: list[str], *, tags: tuple[str, ...] = (), keepalive: int = 60
) -> AsyncIterator[list[InProcessHost]]:
    """Register ``names`` (through ``api``) and run their agents in this loop until exit.

    The keep-alive (a heartbeat every half of it) is longer than a real host's default: fifty
    hosts in one process share one core, and their heartbeats are not what these tests are about.
    """
    hosts: list[InProcessHost] = []
    for name in names:
        resp = await api.post("/v1/devices", json={"name": name, "serial_url": "socket://127.0.0.1:9"})
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()["agent_config"]
        data["agent"] = {"state_dir": str(host_state_dir(fleet, name))}
        data["mqtt"]["keepalive"] = keepalive
        hosts.append(InProcessHost(config=parse_config(data)))
        if tags:
            (await api.post(f"/v1/devices/{name}/tags", json={"tags": list(tags)})).raise_for_status()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(h.run(), name=f"host-{h.name}") for h in hosts]
        try:
            yield hosts
        finally:
            for task in tasks:
                task.cancel()
