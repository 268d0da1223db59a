"""The degraded path, timed: submit -> printed through a phone bridge over BLE, and where the time goes.

One process: the controller (embedded broker, HTTP API), a printer host registered but offline (its
agent never runs), a virtual BLE printer on bumble's real stack (an in-process ``LocalLink``) set
as that printer's BLE side with its identity key (policy ``required``), and a phone bridge near it,
run by ``run_bridge`` over a ``BumbleRadio``. For each job size, ``--n`` jobs one after another
through the HTTP API; each is checked printed once, on the BLE printer, with nothing dropped.

Per job (``at`` of the job's events, in ms; the controller records the first three, the bridge
stamps ``printing`` and ``printed`` on its clock, kept in step with the controller's by heartbeats):

* total: the client's wall clock from POST /v1/jobs until the long poll answers ``printed``;
* reroute: queued -> "rerouted to bridge" (the controller sees the host offline, offers the job);
* BLE connect: "rerouted" -> "bridge ... connected": the offer over MQTT, then the bridge's find
  (scan), connect, MTU exchange and service discovery, identity challenge, and ``bridge.ready``;
* hand-over: "connected" -> "printing": ``job.print``, ``job.claim``/``job.grant``, first chunk;
* write: "printing" -> "printed": every chunk after the first, paced, with write-with-response
  barriers, the last one acknowledged.

The write rate (bytes / write) is set against the bridge's pacing ceiling (``DEFAULT_BYTES_PER_S``
in phone_bridge/ble.py) and the virtual printer's drain rate; write/ideal divides the write by the
pacer's schedule, (bytes - last chunk) / ceiling, the least time the pacer allows.

Run: ``.venv/bin/python bench/degraded_path.py`` (about 5 minutes with the default 20 jobs a size,
most of it the 48 KB jobs at 4000 B/s; ``--n 5`` about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.config import ControllerConfig, DataDir
from cloud.service import ControllerService
from phone_bridge.ble import DEFAULT_BYTES_PER_S, MAX_CHUNK
from phone_bridge.bleak_bumble import BumbleRadio
from phone_bridge.bridge import run_bridge
from phone_bridge.config import parse_bridge_config
from phone_bridge.virtual_printer import VirtualPrinter, VirtualPrinterConfig, public_key_b64
from printfleet.runner import embedded_broker, sample_receipt

HOST = "kiosk-1"
BRIDGE = "phone-1"
BLE_NAME = "MPT-II"
UNIQUE_ID = "bench-kiosk-1"
RASTER_WIDTH_BYTES = 48  # 384 dots: a 58 mm printer's line


@dataclass(frozen=True)
class Size:
    label: str
    body: Any  # the POST /v1/jobs fields besides the printer (one of document, text, raw_base64)
    marker: str  # a line the printed receipt carries, to count it


def sizes() -> list[Size]:
    import base64

    lines = "".join(f"{n:03d} Almond croissant x2 .......... 5.80\n" for n in range(105))
    rows = 1000
    # stripes 8 dots high (no 0x10 byte: nothing a printer could take for a real-time command)
    raster = b"".join(bytes([0x55 if (row // 8) % 2 else 0xAA]) * RASTER_WIDTH_BYTES for row in range(rows))
    raw = (
        b"\x1b@RASTER JOB\n"
        + b"\x1dv0\x00"
        + bytes([RASTER_WIDTH_BYTES, 0, rows & 0xFF, rows >> 8])
        + raster
        + b"\n\x1dV\x00"
    )
    return [
        Size("short receipt", {"document": sample_receipt("BENCH1")}, "Order BENCH1"),
        Size("~4 KB text receipt", {"text": "TEXT JOB\n" + lines}, "TEXT JOB"),
        Size("~48 KB raster", {"raw_base64": base64.b64encode(raw).decode()}, "RASTER JOB"),
    ]


@dataclass(frozen=True)
class Timing:
    size: int
    total_ms: float
    reroute_ms: int
    connect_ms: int
    handover_ms: int
    write_ms: int


def _at(job: dict[str, Any], needle: str, state: str | None = None) -> int:
    for event in job["events"]:
        if needle in (event["detail"] or "") and (state is None or event["state"] == state):
            at: int = event["at"]
            return at
    raise AssertionError(f"no event {needle!r} in {job['events']}")


def timing(job: dict[str, Any], total_ms: float) -> Timing:
    queued = job["created_at"]
    rerouted = _at(job, f"rerouted to bridge {BRIDGE}")
    connected = _at(job, f"bridge {BRIDGE} connected to the printer")
    printing = _at(job, "writing over BLE", "printing")
    printed = _at(job, "printed over BLE", "printed")
    return Timing(
        size=job["size"],
        total_ms=total_ms,
        reroute_ms=rerouted - queued,
        connect_ms=connected - rerouted,
        handover_ms=printing - connected,
        write_ms=printed - printing,
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def expect(resp: httpx.Response, status: int) -> dict[str, Any]:
    if resp.status_code != status:
        raise SystemExit(f"{resp.request.method} {resp.request.url}: HTTP {resp.status_code} {resp.text}")
    data: dict[str, Any] = resp.json()
    return data


def count(printer: VirtualPrinter, marker: str) -> int:
    """Receipts the printer printed that carry ``marker``."""
    return sum(r.text.count(marker) for r in printer.model.receipts)


async def wait_printed(printer: VirtualPrinter, marker: str, before: int) -> None:
    """The bridge reports printed once the printer acknowledged every byte; wait until it printed them."""
    await printer.wait_until(lambda p: count(p, marker) > before, timeout=30)


async def wait_online(http: httpx.AsyncClient) -> None:
    async with asyncio.timeout(30):
        while True:
            if (await expect(await http.get(f"/v1/bridges/{BRIDGE}"), 200))["online"]:
                return
            await asyncio.sleep(0.05)  # polling until the bridge's session is up, bounded above


async def main(n: int, drain: float, buffer: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pf-degraded-") as tmp:
        data_dir = DataDir(root=Path(tmp) / "controller")
        config = ControllerConfig(
            data_dir=data_dir, db_url=data_dir.db_url, mqtt_bind=("127.0.0.1", 0), http_bind=("127.0.0.1", 0)
        )
        key = Ed25519PrivateKey.generate()
        link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves LocalLink.__init__ unannotated
        vconfig = VirtualPrinterConfig(
            name=BLE_NAME, unique_id=UNIQUE_ID, identity_key=key, drain_bytes_per_s=drain, buffer_size=buffer
        )
        async with contextlib.AsyncExitStack() as stack:
            svc = await stack.enter_async_context(ControllerService(config, broker=embedded_broker))
            assert svc.endpoints is not None
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=svc.endpoints.http_url,
                    headers={"Authorization": f"Bearer {svc.admin_token}"},
                    timeout=30,
                )
            )
            # the host is registered and never comes online: every job takes the degraded path
            await expect(await http.post("/v1/devices", json={"name": HOST, "serial_url": "loop://"}), 201)
            vp = await stack.enter_async_context(VirtualPrinter(vconfig, link=link))
            ble = {"ble_name": BLE_NAME, "public_key": public_key_b64(key), "unique_id": UNIQUE_ID}
            await expect(
                await http.patch(f"/v1/printers/{HOST}/ble", json={**ble, "identity": "required"}), 200
            )
            bridge = await expect(await http.post("/v1/bridges", json={"name": BRIDGE, "near": [HOST]}), 201)
            radio = await stack.enter_async_context(BumbleRadio(link))
            bridge_config = parse_bridge_config(bridge["bridge_config"])
            await stack.enter_async_context(background(run_bridge(bridge_config, backend=radio), "bridge"))
            await wait_online(http)

            results: dict[str, list[Timing]] = {}
            for size in sizes():
                runs: list[Timing] = []
                for _ in range(n):
                    before = count(vp, size.marker)
                    started = time.perf_counter()
                    job = await expect(await http.post("/v1/jobs", json={"printer": HOST, **size.body}), 201)
                    done = await expect(
                        await http.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 120}, timeout=130),
                        200,
                    )
                    total_ms = (time.perf_counter() - started) * 1000
                    if done["state"] != "printed" or done["route"] != "bridge":
                        raise SystemExit(f"job not printed by the bridge: {done}")
                    await wait_printed(vp, size.marker, before)
                    runs.append(timing(done, total_ms))
                results[size.label] = runs
                print(f"{size.label}: {n} jobs done", file=sys.stderr, flush=True)
            printed = {s.marker: count(vp, s.marker) for s in sizes()}
            dropped = vp.bytes_dropped
    report(results, n, drain, buffer, printed, dropped)


def report(
    results: dict[str, list[Timing]], n: int, drain: float, buffer: int, printed: dict[str, int], dropped: int
) -> None:
    print(
        f"degraded path (host offline, bridge in-process, virtual BLE printer: drain {drain:.0f} B/s, "
        f"buffer {buffer} B, MTU 517; bridge pacing {DEFAULT_BYTES_PER_S:.0f} B/s), n={n} jobs a size"
    )
    print(f"printed on the BLE printer: {printed}; bytes dropped by its buffer: {dropped}")
    header = (
        f"{'job':<20}{'bytes':>7}  {'total':>13}  {'reroute':>11}  {'BLE connect':>13}  "
        f"{'hand-over':>11}  {'write':>13}  {'B/s':>6}  {'write/ideal':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, runs in results.items():
        size = runs[0].size

        def mp(values: list[float]) -> str:
            return f"{statistics.median(values):.0f}/{pct(values, 0.95):.0f}"

        writes = [float(r.write_ms) for r in runs]
        write_s = statistics.median(writes) / 1000
        rate = f"{size / write_s:.0f}" if write_s else "-"
        # the pacer starts the last chunk (bytes before it) / ceiling after the first: the least a write takes
        last_chunk = size % MAX_CHUNK or MAX_CHUNK
        ideal_s = (size - last_chunk) / DEFAULT_BYTES_PER_S
        ratio = f"{write_s / ideal_s:.3f}" if ideal_s else "-"
        print(
            f"{label:<20}{size:>7}  {mp([r.total_ms for r in runs]):>13}  "
            f"{mp([float(r.reroute_ms) for r in runs]):>11}  {mp([float(r.connect_ms) for r in runs]):>13}  "
            f"{mp([float(r.handover_ms) for r in runs]):>11}  {mp(writes):>13}  "
            f"{rate:>6}  {ratio:>11}"
        )
    print("times in ms, median/p95 over the jobs; B/s = bytes / median write;")
    print(
        f"write/ideal = median write / ((bytes - last chunk) / {DEFAULT_BYTES_PER_S:.0f} B/s), the pacer's"
        f" schedule (chunks of {MAX_CHUNK} B); the printer drains {drain:.0f} B/s,"
        f" {drain / DEFAULT_BYTES_PER_S:.1f}x the bridge's pacing ceiling"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="jobs per size (default 20)")
    parser.add_argument("--drain", type=float, default=8000.0, help="the virtual printer's print rate, B/s")
    parser.add_argument("--buffer", type=int, default=512, help="the virtual printer's receive buffer, bytes")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.drain, args.buffer))
