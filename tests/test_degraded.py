"""The degraded path end to end: controller, broker, agent process, pty printer, and a phone bridge
printing over BLE to a virtual printer on bumble's real stack.

Each test asserts on what the printers themselves received: the pty printer of the host and the
virtual BLE printer, so "printed once, by the bridge" is checked on paper, not only in the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kernel.sim.printer import PtyPrinter
from phone_bridge.virtual_printer import Impostor, public_key_b64
from tests.bridgekit import ble_printer, ble_rig, running_bridge, submit, wait_bridge_online, wait_job
from tests.fleet import AgentProcess, Fleet, running_fleet
from tests.latency_proxy import LatencyProxy

#: Short leases and offers so the races happen within a test's time.
ROUTING = {"lease_s": 3.0, "bridge_offer_s": 8.0, "bridge_lease_s": 6.0}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, "embedded", **ROUTING) as f:
        yield f


async def _host(
    fleet: Fleet, printer: PtyPrinter, name: str = "kiosk-1", mqtt_url: str | None = None
) -> Path:
    return await fleet.add_device(name, printer.url, keepalive=2, mqtt_url=mqtt_url)


async def test_offline_host_job_printed_once_by_the_bridge(fleet: Fleet) -> None:
    async with PtyPrinter() as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        async with (
            ble_printer(rig, fleet, "kiosk-1") as vp,
            running_bridge(fleet, rig, "phone-1", ["kiosk-1"]),
        ):
            first = await submit(fleet, "kiosk-1", "normal path")
            job = await wait_job(fleet, first, {"printed"})
            assert job["route"] == "agent" and job["executor"] == "dev-kiosk-1"

            await agent.kill()
            await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)
            job_id = await submit(fleet, "kiosk-1", "ORDER 42 over BLE")
            job = await wait_job(fleet, job_id, {"printed", "failed", "unknown"}, timeout=40)
            assert job["state"] == "printed", job
            assert job["route"] == "bridge" and job["executor"] == "brg-phone-1"
            assert "printed over BLE by bridge phone-1 (identity verified)" in job["detail"]
            details = " | ".join(e["detail"] or "" for e in job["events"])
            assert "rerouted to bridge phone-1: host kiosk-1 offline" in details

            receipts = await vp.wait_for_receipts(1, timeout=5)
            assert [r.text.count("ORDER 42 over BLE") for r in receipts] == [1]

            # the host comes back: it never had the job, and prints nothing of it
            await fleet.start_agent(cfg)
            await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
            check = await submit(fleet, "kiosk-1", "after return")
            assert (await wait_job(fleet, check, {"printed"}))["route"] == "agent"
            printed = "\n".join(r.text for r in pty.model.receipts)
            assert "ORDER 42" not in printed and "after return" in printed
            assert sum(r.text.count("ORDER 42") for r in vp.model.receipts) == 1


async def test_host_back_with_the_job_in_its_journal_does_not_print_it(fleet: Fleet) -> None:
    """The race the lease exists for: the agent holds the job (acknowledged, held: paper out) and
    goes silent; its lease lapses; the bridge prints the job; the agent comes back with the job
    still queued in its journal, asks for the right to print it, is refused, and prints nothing."""
    async with PtyPrinter() as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        pty.set_fault(paper_out=True)
        job_id = await submit(fleet, "kiosk-1", "RACE JOB")
        held = await wait_job(fleet, job_id, {"held"}, timeout=20)
        assert "paper" in (held["detail"] or "")

        agent.signal(signal.SIGSTOP)  # alive, journal intact, but silent
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=10)
        async with (
            ble_printer(rig, fleet, "kiosk-1") as vp,
            running_bridge(fleet, rig, "phone-1", ["kiosk-1"]),
        ):
            job = await wait_job(fleet, job_id, {"printed", "failed", "unknown"}, timeout=40)
            assert job["state"] == "printed" and job["executor"] == "brg-phone-1", job
            reroute = [e for e in job["events"] if "rerouted" in (e["detail"] or "")]
            assert len(reroute) == 1
            # rerouted only after the lease the agent held had lapsed
            held_at = max(e["at"] for e in job["events"] if e["state"] == "held")
            assert reroute[0]["at"] - held_at >= ROUTING["lease_s"] * 1000
            assert sum(r.text.count("RACE JOB") for r in vp.model.receipts) == 1

            pty.set_fault(paper_out=False)
            agent.signal(signal.SIGCONT)
            await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
            # the agent asks for the job and is refused: wait until it has said so, then look at paper
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while "not printed here" not in agent.log_text():
                assert loop.time() < deadline, agent.log_text()[-3000:]
                await asyncio.sleep(0.1)  # polling the agent's log, bounded by the deadline
            later = await submit(fleet, "kiosk-1", "NEXT JOB")
            assert (await wait_job(fleet, later, {"printed"}))["executor"] == "dev-kiosk-1"
            printed = "\n".join(r.text for r in pty.model.receipts)
            assert "RACE JOB" not in printed and "NEXT JOB" in printed
            final = (await fleet.api("GET", f"/v1/jobs/{job_id}")).json()
            assert final["state"] == "printed" and final["executor"] == "brg-phone-1"


async def test_agent_dead_mid_write_is_not_rerouted_and_ends_unknown(fleet: Fleet) -> None:
    async with PtyPrinter(drain_bytes_per_s=400) as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        async with (
            ble_printer(rig, fleet, "kiosk-1") as vp,
            running_bridge(fleet, rig, "phone-1", ["kiosk-1"]),
        ):
            job_id = await submit(fleet, "kiosk-1", "LONG JOB\n" + "line of a long receipt\n" * 60)
            await wait_job(fleet, job_id, {"printing"}, timeout=20)
            await agent.kill()
            await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)
            # well past the lease and the offer time: a claimed job stays with its executor
            await asyncio.sleep(ROUTING["lease_s"] + 4)
            job = (await fleet.api("GET", f"/v1/jobs/{job_id}")).json()
            assert job["state"] == "printing" and job["route"] == "agent", job
            assert vp.bytes_received == 0

            await fleet.start_agent(cfg)
            job = await wait_job(fleet, job_id, {"unknown"}, timeout=20)
            assert job["executor"] == "dev-kiosk-1"
            assert vp.bytes_received == 0


async def test_slow_host_path_reroutes_to_the_bridge(fleet: Fleet) -> None:
    """Latency-triggered: the host is online, but its round trip is above the printer's threshold."""
    assert fleet.svc.endpoints is not None
    broker_port = int(fleet.svc.endpoints.mqtt_urls[0].rsplit(":", 1)[1])
    async with (
        PtyPrinter() as pty,
        ble_rig() as rig,
        LatencyProxy("127.0.0.1", broker_port) as proxy,
    ):
        cfg = await _host(fleet, pty, mqtt_url=proxy.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"] and d["latency_ms"] is not None, timeout=20)
        async with (
            ble_printer(rig, fleet, "kiosk-1") as vp,
            running_bridge(fleet, rig, "phone-1", ["kiosk-1"]),
        ):
            await fleet.cli("printers", "set", "kiosk-1", "--latency-threshold", "400")
            fast = await submit(fleet, "kiosk-1", "FAST PATH")
            assert (await wait_job(fleet, fast, {"printed"}))["route"] == "agent"

            proxy.delay_s = 0.4  # each way: a round trip of about 800 ms
            await fleet.wait_device("kiosk-1", lambda d: (d["latency_ms"] or 0) > 400, timeout=20)
            slow = await submit(fleet, "kiosk-1", "SLOW PATH")
            job = await wait_job(fleet, slow, {"printed", "failed", "unknown"}, timeout=40)
            assert job["state"] == "printed" and job["executor"] == "brg-phone-1", job
            assert any("round trip" in (e["detail"] or "") for e in job["events"])
            assert sum(r.text.count("SLOW PATH") for r in vp.model.receipts) == 1

            proxy.delay_s = 0.0
            await fleet.wait_device("kiosk-1", lambda d: (d["latency_ms"] or 1e9) < 400, timeout=20)
            again = await submit(fleet, "kiosk-1", "FAST AGAIN")
            assert (await wait_job(fleet, again, {"printed"}))["route"] == "agent"
            printed = "\n".join(r.text for r in pty.model.receipts)
            assert "SLOW PATH" not in printed and "FAST AGAIN" in printed


async def test_impostor_with_the_right_name_is_refused(fleet: Fleet) -> None:
    async with PtyPrinter() as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        await agent.kill()
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)
        async with (
            ble_printer(rig, fleet, "kiosk-1", impostor=Impostor.WRONG_KEY) as fake,
            running_bridge(fleet, rig, "phone-1", ["kiosk-1"]) as bridge,
        ):
            job_id = await submit(fleet, "kiosk-1", "NOT FOR IMPOSTORS")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not bridge.outcomes:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)  # polling the bridge's outcomes, bounded by the deadline
            (outcome,) = bridge.outcomes
            assert outcome.state == "not-taken" and "identity" in outcome.detail.lower(), outcome
            assert fake.bytes_received == 0
            # the bridge's bridge.failed takes the job back to the normal path
            while (job := (await fleet.api("GET", f"/v1/jobs/{job_id}")).json())["route"] != "agent":
                assert loop.time() < deadline, job
                await asyncio.sleep(0.05)  # polling the job, bounded by the deadline
            assert job["state"] == "dispatched" and job["executor"] == "dev-kiosk-1"
            assert any("back to the normal path" in (e["detail"] or "") for e in job["events"])
        # the host returns: the job prints on the normal path, once
        await fleet.start_agent(cfg)
        job = await wait_job(fleet, job_id, {"printed"}, timeout=30)
        assert job["executor"] == "dev-kiosk-1"
        assert sum(r.text.count("NOT FOR IMPOSTORS") for r in pty.model.receipts) == 1


# -- the bridge and the printer as separate programs ------------------------------------------------


class PrinterProcess:
    """``python -m phone_bridge.virtual_printer`` in its own process, on a virtual radio server."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: str, public_key: str) -> None:
        self.proc = proc
        self.spec = spec
        self.public_key = public_key
        self.lines: list[str] = []

    async def read_until(self, text: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.lines):
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"printer process ended; output so far: {self.lines}")
                self.lines.append(line.decode().rstrip("\n"))
        return "\n".join(self.lines)

    async def drain(self, seconds: float) -> str:
        """Everything the printer printed within ``seconds`` more."""
        with contextlib.suppress(TimeoutError):
            await self.read_until("\x00never\x00", seconds)
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def printer_process(tmp: Path, *, drain: float = 8000.0) -> AsyncIterator[PrinterProcess]:
    key = Ed25519PrivateKey.generate()
    key_file = tmp / "printer-key.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "phone_bridge.virtual_printer",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "XP-58",
        "--unique-id",
        "uid-kiosk-1",
        "--key",
        str(key_file),
        "--drain",
        str(drain),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"bumble:tcp-client:\S+", first)
        assert match, first
        yield PrinterProcess(proc, match.group(), public_key_b64(key))
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _bridge_process(fleet: Fleet, spec: str) -> AgentProcess:
    """`printfleet bridge register` then `printfleet bridge run --ble-backend SPEC` as a process."""
    cfg = fleet.root / "phone-1.bridge.toml"
    await fleet.cli("bridge", "register", "phone-1", "--near", "kiosk-1", "--out", str(cfg))
    proc = BridgeProcess(config=cfg, log=fleet.root / "phone-1.log", spec=spec)
    await proc.start()
    fleet.agents.append(proc)
    await wait_bridge_online(fleet, "phone-1")
    return proc


@dataclass
class BridgeProcess(AgentProcess):
    spec: str = "bleak"

    async def start(self) -> None:
        fh = open(self.log, "ab")  # noqa: SIM115, ASYNC230 - a local log file handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "printfleet",
                "bridge",
                "run",
                "--config",
                str(self.config),
                "--ble-backend",
                self.spec,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
            )
        finally:
            fh.close()


async def _set_ble_side(fleet: Fleet, printer: PrinterProcess) -> None:
    key_file = fleet.root / "kiosk-1.pub"
    key_file.write_text(printer.public_key)
    await fleet.cli(
        "printers", "set", "kiosk-1", "--ble-name", "XP-58", "--public-key", str(key_file),
        "--unique-id", "uid-kiosk-1", "--identity", "required",
    )  # fmt: skip


async def test_bridge_and_printer_in_other_processes_print_once(fleet: Fleet) -> None:
    """`printfleet bridge run --ble-backend bumble:tcp-client:...` reaching a printer program that
    serves its own virtual radio: a job for an offline host is printed once, by the bridge, and the
    host prints nothing when it returns."""
    async with PtyPrinter() as pty, printer_process(fleet.root) as printer:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        await _set_ble_side(fleet, printer)
        await _bridge_process(fleet, printer.spec)
        await agent.kill()
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)

        res = await fleet.cli("print", "kiosk-1", "--text", "CROSS PROCESS 7", "--wait", "--json", timeout=90)
        job = res.json()
        assert job["state"] == "printed" and job["executor"] == "brg-phone-1", job
        assert "identity verified" in job["detail"]
        shown = (await fleet.cli("jobs", "show", job["id"])).stdout
        assert "path phone bridge (brg-phone-1)" in shown

        await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        output = await printer.drain(3.0)
        assert output.count("CROSS PROCESS 7") == 1
        assert "CROSS PROCESS 7" not in "\n".join(r.text for r in pty.model.receipts)


async def test_bridge_killed_mid_job_ends_unknown_and_is_not_reprinted(fleet: Fleet) -> None:
    async with PtyPrinter() as pty, printer_process(fleet.root, drain=600.0) as printer:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        await _set_ble_side(fleet, printer)
        bridge = await _bridge_process(fleet, printer.spec)
        await agent.kill()
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)

        job_id = await submit(fleet, "kiosk-1", "BIG BLE JOB\n" + "a line of a long receipt\n" * 200)
        await wait_job(fleet, job_id, {"printing"}, timeout=40)
        await bridge.kill()  # SIGKILL while the paced write is under way
        job = await wait_job(fleet, job_id, {"unknown", "printed", "failed"}, timeout=40)
        assert job["state"] == "unknown", job
        assert "bridge phone-1 went silent" in job["detail"]

        # the host returns: an unknown job is never printed again without an operator
        await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        output = await printer.drain(3.0)
        assert "BIG BLE JOB" not in "\n".join(r.text for r in pty.model.receipts)
        assert output.count("BIG BLE JOB") == 0  # the cut never arrived: no complete receipt
        final = (await fleet.api("GET", f"/v1/jobs/{job_id}")).json()
        assert final["state"] == "unknown"


async def test_origin_bridge_goes_first_and_a_bridge_can_submit(fleet: Fleet) -> None:
    """Two bridges near the printer: the job goes to the one it came from (`print --from`, or a
    `job.submit` over that bridge's own session, as a phone app does through the library API)."""
    from phone_bridge.bridge import BridgeError, open_bridge
    from phone_bridge.config import load_bridge_config

    async with PtyPrinter() as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        await agent.kill()
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)
        async with (
            ble_printer(rig, fleet, "kiosk-1") as vp,
            running_bridge(fleet, rig, "phone-a", ["kiosk-1"]) as first,
        ):
            path = fleet.root / "phone-b.toml"
            await fleet.cli("bridge", "register", "phone-b", "--near", "kiosk-1", "--out", str(path))
            async with open_bridge(load_bridge_config(path), backend=rig.radio) as app_bridge:
                await wait_bridge_online(fleet, "phone-b")
                res = await fleet.cli("print", "kiosk-1", "--text", "FROM B", "--from", "phone-b", "--json")
                job_id = res.json()["id"]
                assert res.json()["origin"] == "phone-b"
                instructions = app_bridge.instructions()
                instruction = await asyncio.wait_for(anext(instructions), 20)
                assert instruction.job_id == job_id and instruction.printer.name == "kiosk-1"
                seen: list[tuple[int, int]] = []
                outcome = await instruction.approve(progress=lambda done, total: seen.append((done, total)))
                assert outcome.state == "printed" and outcome.identity == "verified", outcome
                assert seen and seen[-1] == (instruction.size, instruction.size)
                assert [d for d, _ in seen] == sorted(d for d, _ in seen)

                with pytest.raises(BridgeError, match="not registered near printer 'kiosk-9'"):
                    await app_bridge.submit("kiosk-9", text="a printer this phone is not near")
                submitted = await app_bridge.submit("kiosk-1", text="SUBMITTED ON B")
                second = await asyncio.wait_for(anext(instructions), 20)
                assert second.job_id == submitted
                assert (await second.approve()).state == "printed"
                with pytest.raises(Exception, match="already answered"):
                    await second.decline()
            for jid, text in ((job_id, "FROM B"), (submitted, "SUBMITTED ON B")):
                job = (await fleet.api("GET", f"/v1/jobs/{jid}")).json()
                assert job["executor"] == "brg-phone-b" and job["origin"] == "phone-b", job
                assert sum(r.text.count(text) for r in vp.model.receipts) == 1
            assert first.outcomes == []
            refused = await fleet.cli("print", "kiosk-1", "--text", "x", "--from", "nobody", check=False)
            assert refused.code != 0 and "no bridge named 'nobody'" in refused.stderr


async def test_a_bridge_that_declines_hands_the_job_to_the_next(fleet: Fleet) -> None:
    from phone_bridge.bridge import open_bridge
    from phone_bridge.config import load_bridge_config

    async with PtyPrinter() as pty, ble_rig() as rig:
        cfg = await _host(fleet, pty)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("kiosk-1", lambda d: d["online"], timeout=20)
        await agent.kill()
        await fleet.wait_device("kiosk-1", lambda d: not d["online"], timeout=5)
        async with ble_printer(rig, fleet, "kiosk-1") as vp:
            path = fleet.root / "phone-a.toml"
            await fleet.cli("bridge", "register", "phone-a", "--near", "kiosk-1", "--out", str(path))
            async with open_bridge(load_bridge_config(path), backend=rig.radio) as first:
                await wait_bridge_online(fleet, "phone-a")
                job_id = await submit(fleet, "kiosk-1", "SECOND BRIDGE")
                offered = await asyncio.wait_for(anext(first.instructions()), 20)
                await offered.decline("the user is busy")
                async with running_bridge(fleet, rig, "phone-b", ["kiosk-1"]):
                    job = await wait_job(fleet, job_id, {"printed"}, timeout=30)
            assert job["executor"] == "brg-phone-b"
            details = [e["detail"] or "" for e in job["events"]]
            assert any("bridge phone-a: the user is busy" in d for d in details), details
            assert sum(r.text.count("SECOND BRIDGE") for r in vp.model.receipts) == 1
