"""The degraded path under test: a virtual BLE printer (bumble's real stack on a virtual link), a
phone bridge registered through the real CLI and run in-process through bleak over bumble."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phone_bridge.bleak_bumble import BumbleRadio
from phone_bridge.bridge import Outcome, run_bridge
from phone_bridge.config import load_bridge_config
from phone_bridge.virtual_printer import Impostor, VirtualPrinter, VirtualPrinterConfig, public_key_b64
from tests.fleet import Fleet


@dataclass
class BleRig:
    link: LocalLink
    radio: BumbleRadio
    printers: dict[str, VirtualPrinter] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def ble_rig() -> AsyncIterator[BleRig]:
    """A virtual radio: the bridge's side is open; printers are added with :func:`ble_printer`."""
    link = LocalLink()
    async with BumbleRadio(link) as radio:
        yield BleRig(link=link, radio=radio)


@contextlib.asynccontextmanager
async def ble_printer(
    rig: BleRig,
    fleet: Fleet,
    printer: str,
    *,
    ble_name: str = "MPT-II",
    address: str = "F0:C0:00:00:00:01",
    key: Ed25519PrivateKey | None = None,
    identity: str = "preferred",
    impostor: Impostor | None = None,
    register: bool = True,
    **config: Any,
) -> AsyncIterator[VirtualPrinter]:
    """A virtual BLE printer on the rig; its BLE side set on printfleet printer ``printer`` via the CLI.

    ``key`` is the genuine printer's identity key: its public half goes into the printer's record.
    An ``impostor`` advertises the same name but has another key (or none).
    """
    genuine = key or Ed25519PrivateKey.generate()
    unique_id = f"uid-{printer}"
    own_key: Ed25519PrivateKey | None = genuine
    if impostor is Impostor.WRONG_KEY:
        own_key = Ed25519PrivateKey.generate()
    elif impostor is Impostor.NO_KEY:
        own_key = None
    vconfig = VirtualPrinterConfig(
        name=ble_name,
        address=address,
        unique_id=unique_id,
        identity_key=own_key,
        impostor=impostor,
        **config,
    )
    async with VirtualPrinter(vconfig, link=rig.link) as vp:
        if register:
            key_file = fleet.root / f"{printer}.pub"
            key_file.write_text(public_key_b64(genuine))
            await fleet.cli(
                "printers",
                "set",
                printer,
                "--ble-name",
                ble_name,
                "--public-key",
                str(key_file),
                "--unique-id",
                unique_id,
                "--identity",
                identity,
            )
        rig.printers[printer] = vp
        yield vp


@dataclass
class RunningBridge:
    name: str
    outcomes: list[Outcome]
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running_bridge(
    fleet: Fleet, rig: BleRig, name: str, near: list[str], *, register: bool = True
) -> AsyncIterator[RunningBridge]:
    """``printfleet bridge register NAME --near ...`` then the bridge itself, approving every job."""
    path = fleet.root / f"{name}.bridge.toml"
    if register:
        args = ["bridge", "register", name, "--out", str(path)]
        for printer in near:
            args += ["--near", printer]
        await fleet.cli(*args)
    config = load_bridge_config(path)
    outcomes: list[Outcome] = []
    task = asyncio.create_task(
        run_bridge(config, backend=rig.radio, on_outcome=outcomes.append), name=f"bridge-{name}"
    )
    bridge = RunningBridge(name=name, outcomes=outcomes, task=task)
    try:
        await wait_bridge_online(fleet, name)
        yield bridge
    finally:
        await bridge.stop()


async def wait_bridge_online(fleet: Fleet, name: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await fleet.api("GET", f"/v1/bridges/{name}")
        if resp.status_code == 200 and resp.json()["online"]:
            return
        if loop.time() > deadline:
            raise AssertionError(f"bridge {name} not online within {timeout} s: {resp.text}")
        await asyncio.sleep(0.05)  # polling interval of an observer, bounded by the deadline


async def wait_job(fleet: Fleet, job_id: str, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
    """Poll a job until it reaches one of ``states``; the job view with its events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job: dict[str, Any] = {}
    while loop.time() < deadline:
        resp = await fleet.api("GET", f"/v1/jobs/{job_id}")
        job = resp.json()
        if job["state"] in states:
            return job
        await asyncio.sleep(0.05)  # polling interval of an observer, bounded by the deadline
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout} s: {job}")


async def submit(fleet: Fleet, printer: str, text: str, **extra: Any) -> str:
    resp = await fleet.api("POST", "/v1/jobs", json={"printer": printer, "text": text, **extra})
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id
