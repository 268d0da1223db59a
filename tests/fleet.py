"""A running fleet for end-to-end tests: controller service (embedded broker or mosquitto), the real
CLI as subprocesses, device agents as subprocesses, simulated printers on real ptys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from broker.testing import MosquittoProcess
from cloud import db
from cloud.config import ControllerConfig, DataDir
from cloud.registry import DbCredentials, Registry
from cloud.service import ControllerService
from device_agent.config import load_config, write_config
from printfleet.runner import embedded_broker

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class AgentProcess:
    config: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        fh = open(self.log, "ab")  # noqa: SIM115, ASYNC230 - a local log file handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "printfleet",
                "agent",
                "run",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
            )
        finally:
            fh.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Fleet:
    svc: ControllerService
    root: Path
    broker_kind: str
    mosquitto: MosquittoProcess | None = None
    agents: list[AgentProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.svc.config.data_dir.root

    @property
    def http(self) -> str:
        assert self.svc.endpoints is not None
        return self.svc.endpoints.http_url

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PRINTFLEET_HOME"] = str(self.data_dir)
        env.pop("PRINTFLEET_SERVER", None)
        env.pop("PRINTFLEET_TOKEN", None)
        env["COLUMNS"] = "200"
        return env

    async def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> CliResult:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "printfleet",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(),
            cwd=str(self.root),
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        result = CliResult(code=proc.returncode or 0, stdout=out.decode(), stderr=err.decode())
        if check and result.code != 0:
            raise AssertionError(
                f"printfleet {' '.join(args)} exited {result.code}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=self.http, headers={"Authorization": f"Bearer {self.svc.admin_token}"}, timeout=30
        ) as client:
            return await client.request(method, path, **kw)

    async def add_device(
        self, name: str, serial_url: str, *, keepalive: int | None = None, mqtt_url: str | None = None
    ) -> Path:
        cfg = self.root / f"{name}.agent.toml"
        await self.cli("devices", "add", name, "--serial", serial_url, "--out", str(cfg))
        import tomllib

        data = tomllib.loads(cfg.read_text())
        data["agent"] = {"state_dir": f"{name}-state"}  # each test keeps its journal in its tmp dir
        if keepalive is not None:
            data["mqtt"]["keepalive"] = keepalive
        if mqtt_url is not None:  # e.g. through a latency proxy
            data["mqtt"]["urls"] = [mqtt_url]
        write_config(cfg, data)
        await self.sync_broker_credentials(load_config(cfg).username, load_config(cfg).password)
        return cfg

    async def sync_broker_credentials(self, username: str, password: str) -> None:
        """mosquitto reloads its password file on SIGHUP (sent by the controller): wait until it
        accepts the device."""
        if self.mosquitto is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.mosquitto.port,
                    identifier=username,
                    username=username,
                    password=password,
                    timeout=2,
                ):
                    return
            except aiomqtt.MqttError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)  # polling interval, bounded by the deadline

    async def start_agent(self, cfg: Path) -> AgentProcess:
        agent = AgentProcess(config=cfg, log=cfg.with_suffix(".log"))
        await agent.start()
        self.agents.append(agent)
        return agent

    async def device(self, name: str) -> dict[str, Any]:
        resp = await self.api("GET", f"/v1/devices/{name}")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    async def wait_device(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, *, poll: float = 0.05
    ) -> float:
        """Poll the API until the device matches; return the seconds it took (bounded)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        last: dict[str, Any] = {}
        while loop.time() - start < timeout:
            last = await self.device(name)
            if predicate(last):
                return loop.time() - start
            await asyncio.sleep(poll)  # polling interval of an observer, bounded by the timeout
        raise AssertionError(f"device {name} did not reach the expected state within {timeout} s: {last}")


async def _prepared_registry(dd: DataDir) -> tuple[Registry, Any]:
    dd.ensure()
    await asyncio.to_thread(db.migrate, dd.db_url)
    engine = db.make_engine(dd.db_url)
    registry = Registry(db.make_sessionmaker(engine))
    await registry.ensure_controller_credential(dd.read_or_create_secret(dd.controller_secret_path))
    return registry, engine


@contextlib.asynccontextmanager
async def running_fleet(root: Path, broker_kind: str, **config: Any) -> AsyncIterator[Fleet]:
    dd = DataDir(root=root / "controller")
    mosq: MosquittoProcess | None = None
    external: str | None = None
    async with contextlib.AsyncExitStack() as stack:
        if broker_kind == "mosquitto":
            registry, engine = await _prepared_registry(dd)
            creds = await DbCredentials(registry, "main").all()
            await engine.dispose()
            (root / "mosquitto").mkdir()
            mosq = await stack.enter_async_context(MosquittoProcess(root / "mosquitto", creds))
            external = f"mqtt://127.0.0.1:{mosq.port}"
            # the controller keeps mosquitto's passwd/acl in step and makes it reload (SIGHUP)
            config = {
                "mosquitto_dir": root / "mosquitto",
                "mosquitto_reload": f"kill -HUP {mosq.pid}",
                **config,
            }
        settings: dict[str, Any] = {"mqtt_bind": ("127.0.0.1", 0), "http_bind": ("127.0.0.1", 0), **config}
        cfg = ControllerConfig(data_dir=dd, db_url=dd.db_url, external_broker=external, **settings)
        svc = await stack.enter_async_context(ControllerService(cfg, broker=embedded_broker))
        fleet = Fleet(svc=svc, root=root, broker_kind=broker_kind, mosquitto=mosq)
        try:
            yield fleet
        finally:
            for agent in fleet.agents:
                await agent.stop()
