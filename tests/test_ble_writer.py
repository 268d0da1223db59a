"""The bridge's BLE printer side (phone_bridge.ble) against virtual printers on bumble's real BLE stack.

The bridge side is :class:`~phone_bridge.ble.PrinterConnection` over a
:class:`~phone_bridge.bleak_bumble.BumbleRadio` (bleak's public API with ``backend=``); each printer
is a :class:`~phone_bridge.virtual_printer.VirtualPrinter` on the same ``bumble.link.LocalLink``
(one test puts the printer in another process, reached through ``bumble:tcp-client:...``).
Assertions are on what the virtual printer received and printed, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kernel.gatt import IDENTITY_NONCE_UUID, PROFILES, GattProfile, resolve_profile
from phone_bridge.ble import (
    MAX_CHUNK,
    TRANSITIONS,
    Backend,
    BackendKind,
    BackendSpec,
    BackendUnavailable,
    Backoff,
    BleError,
    Chunk,
    ConnectFailed,
    ConnectionState,
    IdentityOutcome,
    IdentityPolicy,
    IdentityRequired,
    ImpostorError,
    InvalidBackendSpec,
    Pacer,
    Pacing,
    PrinterConnection,
    PrinterNotFound,
    PrinterTarget,
    WriteFailed,
    WriteResult,
    open_backend,
    plan_chunks,
)
from phone_bridge.bleak_bumble import BumbleRadio
from phone_bridge.virtual_printer import (
    Impostor,
    VirtualPrinter,
    VirtualPrinterConfig,
    VirtualRadioServer,
    public_key_b64,
)

ROOT = Path(__file__).resolve().parent.parent
DRAIN = 8000.0  # the pacing test's printer prints this many bytes/s
BUFFER = 1024  # ... into a receive buffer of two 512-byte chunks that drops what overflows
ROOMY = 64 * 1024  # a buffer that never overflows, for tests about something else
FAST = Pacing(bytes_per_s=None, barrier_every=4)  # unpaced, for printers with a roomy buffer
QUICK_RETRY = Backoff(initial_s=0.05, max_s=0.2)

#: A vendor service none of PROFILES knows: the fallback rule must find its writable characteristic.
VENDOR = GattProfile(
    name="acme-vendor",
    service_uuid="8c2a0001-5e1f-4b7e-9d3c-0a1b2c3d4e5f",
    write_uuid="8c2a0002-5e1f-4b7e-9d3c-0a1b2c3d4e5f",
    notify_uuid="8c2a0003-5e1f-4b7e-9d3c-0a1b2c3d4e5f",
)


def receipt(lines: int = 120) -> tuple[bytes, str]:
    """An ESC/POS receipt (ESC @, text lines, feed and cut) and the text it prints as."""
    text = [f"{i:03d} ITEM {'x' * (i % 17):<17} {i * 37 % 1000:>6}.{i % 100:02d} EUR" for i in range(lines)]
    data = b"\x1b@" + b"".join(line.encode() + b"\n" for line in text) + b"\x1bd\x03\x1dV\x00"
    return data, "\n".join(text)


def target(config: VirtualPrinterConfig, **overrides: object) -> PrinterTarget:
    """The printer as the cloud would describe it: found by address unless told otherwise."""
    fields: dict[str, object] = {
        "name": f"shop/{config.name}",
        "unique_id": config.unique_id,
        "ble_address": config.address,
    }
    if config.identity_key is not None:
        fields["public_key"] = public_key_b64(config.identity_key)
    fields.update(overrides)
    return PrinterTarget(**fields)  # type: ignore[arg-type]  # keyword fields of a test table


@contextlib.asynccontextmanager
async def bench(
    *configs: VirtualPrinterConfig,
) -> AsyncIterator[tuple[LocalLink, Backend, list[VirtualPrinter]]]:
    """Printers and the bridge's radio on one virtual link; the radio opened as a Backend."""
    link = LocalLink()
    async with contextlib.AsyncExitStack() as stack:
        printers = [await stack.enter_async_context(VirtualPrinter(c, link=link)) for c in configs]
        radio = await stack.enter_async_context(BumbleRadio(link))
        backend = await stack.enter_async_context(open_backend(radio))
        yield link, backend, printers


async def refused(conn: PrinterConnection) -> None:
    """Enter ``conn`` expecting a failure (the caller's ``pytest.raises`` says which)."""
    async with conn:
        pytest.fail(f"connected to {conn.address}")


def keyed(**kwargs: object) -> VirtualPrinterConfig:
    return VirtualPrinterConfig(identity_key=Ed25519PrivateKey.generate(), **kwargs)  # type: ignore[arg-type]


# -- printing: every profile, the fallback, byte-exact ----------------------------------------------


@pytest.mark.parametrize("profile", [*PROFILES, VENDOR], ids=[*(p.name for p in PROFILES), "vendor-fallback"])
async def test_prints_a_receipt_byte_exact_on_each_profile(profile: GattProfile) -> None:
    data, text = receipt()
    config = keyed(name="POS-5805", profile=profile, buffer_size=ROOMY)
    seen: list[tuple[int, int]] = []
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config), backend, pacing=FAST) as conn,
    ):
        expected = profile.name if profile in PROFILES else "fallback"
        assert conn.profile_name == expected and conn.channel.write_uuid == profile.write_uuid
        assert conn.identity is IdentityOutcome.VERIFIED and conn.address == config.address
        assert conn.chunk_size == MAX_CHUNK  # MTU 517 says 514; GATT values stop at 512
        result = await conn.write(data, progress=lambda sent, total: seen.append((sent, total)))
        # Returning means the last barrier was answered: the printer has every byte already.
        assert printer.bytes_received == len(data)
        await printer.wait_idle()
        assert bytes(printer.model.raw_printed) == data and printer.bytes_dropped == 0
        assert printer.model.receipts[0].text == text
    chunks = math.ceil(len(data) / MAX_CHUNK)
    assert (result.bytes_written, result.chunks, result.barriers) == (
        len(data),
        chunks,
        math.ceil(chunks / 4),
    )
    assert (printer.write_requests, printer.write_commands) == (result.barriers, chunks - result.barriers)
    assert [s for s, _ in seen] == sorted({min(n * MAX_CHUNK, len(data)) for n in range(1, chunks + 1)})
    assert {t for _, t in seen} == {len(data)}


async def test_preferred_profile_absent_falls_back_to_the_order() -> None:
    config = VirtualPrinterConfig(profile=PROFILES[1], buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config, ble_profile="nordic-uart"), backend, pacing=FAST) as conn,
    ):
        assert conn.profile_name == PROFILES[1].name
        await conn.write(b"\x1b@issc\n\x1dV\x00")
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == "issc"


async def test_without_write_without_response_every_chunk_is_a_write_request() -> None:
    data, _ = receipt(40)
    config = VirtualPrinterConfig(write_without_response=False, buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config), backend, pacing=FAST) as conn,
    ):
        result = await conn.write(data)
        assert printer.bytes_received == len(data)
        await printer.wait_idle()
        assert bytes(printer.model.raw_printed) == data
    assert result.barriers == result.chunks == printer.write_requests > 1 and printer.write_commands == 0


async def test_without_write_requests_a_read_is_the_barrier() -> None:
    data, _ = receipt(40)
    config = VirtualPrinterConfig(write_with_response=False, buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config), backend, pacing=FAST) as conn,
    ):
        result = await conn.write(data)
        assert printer.bytes_received == len(data)  # the read's answer came after every command
        await printer.wait_idle()
        assert bytes(printer.model.raw_printed) == data
    assert printer.write_requests == 0 and printer.write_commands == result.chunks
    assert result.barriers == math.ceil(result.chunks / 4)


# -- pacing ----------------------------------------------------------------------------------------


async def test_unpaced_burst_loses_bytes_where_paced_write_does_not() -> None:
    data = receipt(200)[0]  # about 8 KB
    burst = VirtualPrinterConfig(
        name="BURST", address="F0:C0:00:00:00:0B", buffer_size=BUFFER, drain_bytes_per_s=DRAIN
    )
    paced = VirtualPrinterConfig(
        name="PACED", address="F0:C0:00:00:00:0C", buffer_size=BUFFER, drain_bytes_per_s=DRAIN
    )
    async with bench(burst, paced) as (_, backend, [burst_printer, paced_printer]):
        # bleak directly: every chunk a write command, one write request at the end.
        assert backend.scanner_backend is not None and backend.client_backend is not None
        device = await BleakScanner.find_device_by_address(
            burst.address, timeout=5.0, backend=backend.scanner_backend
        )
        assert device is not None
        async with BleakClient(device, timeout=10.0, backend=backend.client_backend) as client:
            channel = resolve_profile(client.services)
            assert channel is not None
            char = client.services.get_characteristic(channel.write_uuid)
            assert char is not None
            pieces = [data[i : i + MAX_CHUNK] for i in range(0, len(data), MAX_CHUNK)]
            for n, piece in enumerate(pieces, 1):
                await client.write_gatt_char(char, piece, response=n == len(pieces))
        await burst_printer.wait_idle()
        assert burst_printer.bytes_received == len(data)
        assert burst_printer.bytes_dropped > len(data) // 2
        assert bytes(burst_printer.model.raw_printed) != data

        pacing = Pacing(bytes_per_s=0.9 * DRAIN, barrier_every=4)
        async with PrinterConnection.open(target(paced), backend, pacing=pacing) as conn:
            result = await conn.write(data)
        await paced_printer.wait_idle()
        assert bytes(paced_printer.model.raw_printed) == data and paced_printer.bytes_dropped == 0
    ratio = result.bytes_per_s / DRAIN
    print(
        f"\nunpaced burst: {burst_printer.bytes_dropped} of {len(data)} bytes dropped; paced at 90 %: "
        f"{result.bytes_per_s:.0f} B/s = {ratio:.0%} of the {DRAIN:.0f} B/s drain, 0 dropped"
    )
    # Close to the drain limit, never above it. The first chunk goes at once, so a job measures a little
    # above its ceiling: at most job / (job - last chunk) x 90 % (90.2 % here: the last chunk is 16 bytes).
    assert 0.7 <= ratio <= 1.0


def test_pacer_keeps_a_rate_ceiling_and_a_gap_without_credit() -> None:
    pacer = Pacer(Pacing(bytes_per_s=1000.0, gap_s=0.0))
    assert pacer.delay(10.0) == 0
    pacer.sent(500, started=10.0, ended=10.1)
    assert pacer.delay(10.1) == pytest.approx(0.4)  # the 500 bytes earn 0.5 s from their start
    pacer.sent(500, started=10.5, ended=10.5)
    assert pacer.delay(12.0) == 0  # late: no credit saved up for a burst...
    pacer.sent(500, started=12.0, ended=12.0)
    assert pacer.delay(12.0) == pytest.approx(0.5)  # ...the next chunk waits its full share

    gap = Pacer(Pacing(bytes_per_s=None, gap_s=0.02))
    assert gap.delay(0.0) == 0
    gap.sent(20, started=0.0, ended=0.01)
    assert gap.delay(0.01) == pytest.approx(0.02)
    assert Pacer(Pacing(bytes_per_s=None)).delay(5.0) == 0


def test_plan_chunks_puts_barriers_every_n_and_last() -> None:
    assert plan_chunks(0, 512, 4) == []
    assert plan_chunks(1000, 512, 4) == [Chunk(0, 512, False), Chunk(512, 1000, True)]
    plan = plan_chunks(5000, 512, 4)
    assert [c.end - c.start for c in plan] == [512] * 9 + [392]
    assert [n for n, c in enumerate(plan, 1) if c.barrier] == [4, 8, 10]
    assert [c.barrier for c in plan_chunks(1536, 512, None)] == [False, False, True]
    assert all(c.barrier for c in plan_chunks(1536, 512, 1))
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(10, 0, 4)


# -- identity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["preferred", "required"])
async def test_right_printer_is_verified(policy: IdentityPolicy) -> None:
    config = keyed(unique_id="shop-7/printer-2", buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config, identity=policy), backend, pacing=FAST) as conn,
    ):
        assert conn.identity is IdentityOutcome.VERIFIED and printer.challenges == 1
        await conn.write(b"\x1b@verified\n\x1dV\x00")
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == "verified"


@pytest.mark.parametrize("policy", ["preferred", "required"])
async def test_impostor_with_the_wrong_key_is_refused_whatever_the_policy(policy: IdentityPolicy) -> None:
    genuine = Ed25519PrivateKey.generate()
    impostor = VirtualPrinterConfig(identity_key=genuine, impostor=Impostor.WRONG_KEY)  # same name, address
    async with bench(impostor) as (_, backend, [printer]):
        with pytest.raises(ImpostorError) as err:
            await refused(PrinterConnection(target(impostor, identity=policy), backend, attempts=4))
        assert not err.value.retryable and err.value.address == impostor.address
        assert err.value.printer == f"shop/{impostor.name}"
        assert printer.challenges == 1 and printer.connections == 1  # not retried
        assert printer.bytes_received == 0
        await printer.wait_until(lambda p: not p.connected)  # the bridge hung up


async def test_impostor_without_identity_service_is_unverified_when_preferred() -> None:
    config = keyed(impostor=Impostor.NO_KEY, buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config), backend, pacing=FAST) as conn,
    ):
        assert conn.identity is IdentityOutcome.UNVERIFIED
        await conn.write(b"\x1b@unverified\n\x1dV\x00")
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == "unverified"


async def test_required_refuses_an_unverified_printer() -> None:
    config = keyed(impostor=Impostor.NO_KEY)
    async with bench(config) as (_, backend, [printer]):
        with pytest.raises(IdentityRequired, match="no identity service"):
            await refused(PrinterConnection(target(config, identity="required"), backend))
        assert printer.connections == 1 and printer.bytes_received == 0
        await printer.wait_until(lambda p: not p.connected)

        # No key known: refused before the radio is even used.
        with pytest.raises(IdentityRequired, match="no public key"):
            await refused(PrinterConnection(target(config, identity="required", public_key=None), backend))
        assert printer.connections == 1


async def test_preferred_without_a_known_key_is_unverified_without_a_challenge() -> None:
    config = keyed(buffer_size=ROOMY)
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config, public_key=None), backend) as conn,
    ):
        assert conn.identity is IdentityOutcome.UNVERIFIED and printer.challenges == 0


async def test_policy_off_skips_the_challenge() -> None:
    config = keyed(impostor=Impostor.WRONG_KEY, buffer_size=ROOMY)  # would fail the challenge
    async with (
        bench(config) as (_, backend, [printer]),
        PrinterConnection.open(target(config, identity="off"), backend, pacing=FAST) as conn,
    ):
        assert conn.identity is IdentityOutcome.SKIPPED and printer.challenges == 0
        await conn.write(b"\x1b@off\n\x1dV\x00")
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == "off"


# -- failures and retries --------------------------------------------------------------------------


async def test_printer_that_disconnects_mid_job_raises_write_failed_with_counters() -> None:
    data = receipt(200)[0]  # 16 chunks; barriers after chunks 4, 8, 12, 16
    config = VirtualPrinterConfig(disconnect_after_bytes=5000, buffer_size=ROOMY)
    async with bench(config) as (_, backend, [printer]):
        async with PrinterConnection.open(target(config), backend, pacing=FAST) as conn:
            with pytest.raises(WriteFailed) as err:
                await conn.write(data)
            failed = err.value
            assert conn.state is ConnectionState.LOST
            with pytest.raises(WriteFailed) as again:
                await conn.write(b"more")
            assert again.value.bytes_sent == 0
        assert conn.state is ConnectionState.CLOSED
        await printer.wait_idle()
        assert printer.bytes_received == 5000
        assert bytes(printer.model.raw_printed) == data[:5000]
    assert failed.retryable and failed.bytes_total == len(data) and failed.address == config.address
    assert failed.bytes_confirmed == 8 * MAX_CHUNK  # two barriers answered, the third never
    assert printer.bytes_received <= failed.bytes_sent < 12 * MAX_CHUNK
    assert failed.bytes_sent % MAX_CHUNK == 0


async def test_connect_retries_until_the_printer_appears() -> None:
    config = VirtualPrinterConfig(buffer_size=ROOMY)
    link = LocalLink()
    errors: list[BleError] = []
    retried = asyncio.Event()

    def on_retry(_attempt: int, error: BleError, _delay: float) -> None:
        errors.append(error)
        retried.set()

    async def appear_after_the_first_miss(stack: contextlib.AsyncExitStack) -> VirtualPrinter:
        await retried.wait()
        return await stack.enter_async_context(VirtualPrinter(config, link=link))

    async with contextlib.AsyncExitStack() as stack:
        radio = await stack.enter_async_context(BumbleRadio(link))
        backend = await stack.enter_async_context(open_backend(radio))
        appearing = asyncio.create_task(appear_after_the_first_miss(stack), name="printer-appears")
        connection = PrinterConnection.open(
            target(config),
            backend,
            attempts=4,
            scan_timeout=0.5,
            backoff=Backoff(initial_s=0.2, jitter=0.0),
            on_retry=on_retry,
            pacing=FAST,
        )
        async with connection as conn:
            printer = await appearing
            assert 2 <= conn.attempt <= 4 and isinstance(errors[0], PrinterNotFound)
            await conn.write(b"\x1b@late\n\x1dV\x00")
            [printed] = await printer.wait_for_receipts(1)
            assert printed.text == "late"


async def test_connect_retries_after_failed_connects() -> None:
    config = VirtualPrinterConfig(drop_first_connections=2, buffer_size=ROOMY)
    errors: list[BleError] = []
    async with bench(config) as (_, backend, [printer]):
        connection = PrinterConnection.open(
            target(config),
            backend,
            attempts=4,
            backoff=QUICK_RETRY,
            on_retry=lambda _a, error, _d: errors.append(error),
            pacing=FAST,
        )
        async with connection as conn:
            assert conn.attempt == 3 and printer.connections == 3
            assert [type(e) for e in errors] == [ConnectFailed, ConnectFailed]
            assert all(e.retryable for e in errors)
            await conn.write(b"\x1b@third time\n\x1dV\x00")
            [printed] = await printer.wait_for_receipts(1)
            assert printed.text == "third time"


async def test_a_deadline_during_the_challenge_hangs_up() -> None:
    """The caller's deadline (the bridge's offer lapsing) cancels the open: the printer is let go."""
    config = keyed()
    async with bench(config) as (_, backend, [printer]):
        assert backend.client_backend is not None

        class StallingChallenge(backend.client_backend):  # type: ignore[misc,name-defined]
            async def write_gatt_char(
                self, char: BleakGATTCharacteristic, data: bytes, response: bool
            ) -> None:
                if char.uuid == IDENTITY_NONCE_UUID:
                    await asyncio.Event().wait()  # the nonce write is never answered
                await super().write_gatt_char(char, data, response)

        stalling = dataclasses.replace(backend, client_backend=StallingChallenge)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), PrinterConnection.open(target(config), stalling):
                pytest.fail("connected")
        assert printer.connections == 1
        await printer.wait_until(lambda p: not p.connected)


async def test_gives_up_after_the_attempts() -> None:
    config = VirtualPrinterConfig()
    errors: list[BleError] = []
    async with bench() as (_, backend, _printers):
        with pytest.raises(PrinterNotFound, match="not seen") as err:
            await refused(
                PrinterConnection(
                    target(config),
                    backend,
                    attempts=3,
                    scan_timeout=0.2,
                    backoff=QUICK_RETRY,
                    on_retry=lambda _a, error, _d: errors.append(error),
                )
            )
    assert err.value.retryable and len(errors) == 2


# -- finding by name -------------------------------------------------------------------------------


async def test_finds_by_name_preferring_a_device_that_advertises_a_print_service() -> None:
    # Same name twice: one advertises only a vendor service, the other a print service (generic-18f0).
    vendor = VirtualPrinterConfig(
        name="MPT-II", profile=VENDOR, address="F0:C0:00:00:00:0A", buffer_size=ROOMY
    )
    printer_cfg = VirtualPrinterConfig(name="MPT-II", profile=PROFILES[0], address="F0:C0:00:00:00:0D")
    async with bench(vendor, printer_cfg) as (_, backend, [vendor_printer, printer]):
        by_name = target(printer_cfg, ble_address=None, ble_name="MPT-II")
        async with PrinterConnection.open(by_name, backend, pacing=FAST) as conn:
            assert conn.address == printer_cfg.address and conn.ble_name == "MPT-II"
            assert conn.profile_name == PROFILES[0].name
            await conn.write(b"\x1b@by name\n\x1dV\x00")
            [printed] = await printer.wait_for_receipts(1)
            assert printed.text == "by name" and vendor_printer.connections == 0


async def test_finds_by_name_alone_when_no_print_service_is_advertised() -> None:
    vendor = VirtualPrinterConfig(name="ACME-58", profile=VENDOR, buffer_size=ROOMY)
    async with bench(vendor) as (_, backend, [printer]):
        by_name = target(vendor, ble_address=None, ble_name="ACME-58")
        async with PrinterConnection.open(by_name, backend, pacing=FAST) as conn:
            assert conn.address == vendor.address and conn.profile_name == "fallback"
            await conn.write(b"\x1b@vendor\n\x1dV\x00")
            [printed] = await printer.wait_for_receipts(1)
            assert printed.text == "vendor"
        nope = target(vendor, ble_address=None, ble_name="NOPE")
        with pytest.raises(PrinterNotFound, match="'NOPE'"):
            await refused(PrinterConnection(nope, backend, attempts=1, scan_timeout=0.3))


# -- backends --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown BLE backend ''"),
        ("bluez", "unknown BLE backend 'bluez'"),
        ("Bleak", "unknown BLE backend 'Bleak'"),
        (" bleak", "unknown BLE backend ' bleak'"),
        ("bleak:hci0", "bleak takes no argument"),
        ("bumble", "names no HCI transport"),
        ("bumble:", "unknown bumble transport '(none)'"),
        ("bumble:carrier-pigeon:1", "unknown bumble transport 'carrier-pigeon'"),
        ("bumble:tcp-client", "the tcp-client transport needs an argument"),
        ("bumble:tcp-client:127.0.0.1", "needs HOST:PORT"),
        ("bumble:tcp-client:127.0.0.1:http", "needs HOST:PORT"),
        ("bumble:tcp-client:127.0.0.1:70000", "needs HOST:PORT"),
        ("bumble:serial:", "the serial transport needs an argument"),
    ],
)
def test_bad_backend_specs_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(InvalidBackendSpec, match=re.escape(message)) as err:
        BackendSpec.parse(text)
    assert isinstance(err.value, ValueError) and not err.value.retryable
    assert repr(text) in str(err.value)


def test_good_backend_specs_parse_and_print_back() -> None:
    for text, kind, transport in [
        ("bleak", BackendKind.BLEAK, None),
        ("bumble:tcp-client:127.0.0.1:7000", BackendKind.BUMBLE, "tcp-client:127.0.0.1:7000"),
        ("bumble:usb:0", BackendKind.BUMBLE, "usb:0"),
        ("bumble:[driver=rtk]usb:0", BackendKind.BUMBLE, "[driver=rtk]usb:0"),
        ("bumble:vhci", BackendKind.BUMBLE, "vhci"),
    ]:
        spec = BackendSpec.parse(text)
        assert (spec.kind, spec.transport, str(spec)) == (kind, transport, text)
    with pytest.raises(InvalidBackendSpec):
        BackendSpec(kind=BackendKind.BUMBLE)
    with pytest.raises(InvalidBackendSpec):
        BackendSpec(transport="usb:0")


async def test_bumble_backend_on_a_closed_port_is_unavailable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendUnavailable, match=f"bumble:tcp-client:127.0.0.1:{port}"):
        async with open_backend(f"bumble:tcp-client:127.0.0.1:{port}"):
            pytest.fail("the transport opened")


async def test_bumble_backend_whose_controller_never_answers_is_unavailable() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # takes the connection, never speaks HCI

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BackendUnavailable, match=r"did not open within 0\.5 s"):
            async with open_backend(f"bumble:tcp-client:127.0.0.1:{port}", open_timeout=0.5):
                pytest.fail("the transport opened")
        assert len(accepted) == 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(
    Path("/run/dbus/system_bus_socket").exists() or sys.platform != "linux",
    reason="needs a Linux machine without a D-Bus system bus (where bleak's BlueZ backend cannot start)",
)
async def test_bleak_platform_backend_without_bluetooth_is_unavailable_at_once() -> None:
    retries: list[BleError] = []
    async with open_backend("bleak") as backend:
        assert backend.scanner_backend is None and backend.client_backend is None
        with pytest.raises(BackendUnavailable, match="Bluetooth is not available") as err:
            await PrinterConnection(
                target(VirtualPrinterConfig()), backend, on_retry=lambda _a, e, _d: retries.append(e)
            ).__aenter__()
    assert not err.value.retryable and retries == []  # not retried: the stack is missing


async def test_bridge_prints_to_a_printer_in_another_process(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "printer-key.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "phone_bridge.virtual_printer",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "XP-58",
        "--unique-id",
        "far/printer-9",
        "--buffer",
        "4096",
        "--key",
        str(pem),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15.0)).decode()
        match = re.search(r"bumble:tcp-client:\S+", line)
        assert match, line
        data, text = receipt(40)
        far = PrinterTarget(
            name="far",
            unique_id="far/printer-9",
            ble_name="XP-58",
            public_key=public_key_b64(key),
            identity="required",
        )
        async with open_backend(match.group()) as backend, PrinterConnection.open(far, backend) as conn:
            assert conn.identity is IdentityOutcome.VERIFIED and conn.profile_name == PROFILES[0].name
            result = await conn.write(data)
        assert result.bytes_written == len(data)
        printed: list[str] = []
        while (
            line := (await asyncio.wait_for(proc.stdout.readline(), 10.0)).decode()
        ) != "\n" or not printed:
            if line.startswith(("--- receipt", "identity public key")):
                continue
            printed.append(line.rstrip("\n"))
        assert "\n".join(printed) == text
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_docs_example_prints() -> None:
    """docs/ble.md's example, run against a virtual printer holding the test vector's key."""
    doc = (ROOT / "docs" / "ble.md").read_text(encoding="utf-8")
    example = re.search(r"## Printing: `phone_bridge\.ble`.*?```python\n(.*?)```", doc, re.S)
    assert example is not None, "the example moved"
    namespace: dict[str, object] = {}
    exec(compile(example.group(1), "docs/ble.md", "exec"), namespace)
    print_over_ble = cast(Callable[[str, bytes], Awaitable[WriteResult]], namespace["print_over_ble"])
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # the test vector's seed
    config = VirtualPrinterConfig(name="MPT-II", unique_id="printer-1", identity_key=key, buffer_size=ROOMY)
    data, text = receipt(20)
    link = LocalLink()
    async with VirtualRadioServer(link) as server, VirtualPrinter(config, link=link) as printer:
        result = await print_over_ble(f"bumble:{server.spec}", data)
        assert printer.bytes_received == result.bytes_written == len(data)
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == text and bytes(printer.model.raw_printed) == data


# -- values, validation and the lifecycle table ----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "name must not be empty"),
        ({"unique_id": ""}, "unique_id"),
        ({"unique_id": "x" * 129}, "unique_id"),
        ({"ble_address": None, "ble_name": None}, "ble_address or ble_name"),
        ({"ble_profile": "mpt-ii"}, "unknown ble_profile 'mpt-ii'"),
        ({"public_key": "not base64!"}, "base64"),
        ({"public_key": "AAAA"}, "32 bytes"),
        ({"identity": "maybe"}, "identity must be one of"),
    ],
)
def test_printer_target_refuses_bad_fields(fields: dict[str, object], message: str) -> None:
    good: dict[str, object] = {"name": "p", "unique_id": "printer-1", "ble_address": "F0:C0:00:00:00:01"}
    with pytest.raises(ValueError, match=re.escape(message)):
        PrinterTarget(**{**good, **fields})  # type: ignore[arg-type]  # deliberately bad input


@pytest.mark.parametrize(
    "fields",
    [
        {"bytes_per_s": 0},
        {"bytes_per_s": -1.0},
        {"bytes_per_s": math.inf},
        {"barrier_every": 0},
        {"gap_s": -0.1},
    ],
)
def test_pacing_refuses_bad_values(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"bytes_per_s|barrier_every|gap_s"):
        Pacing(**fields)  # type: ignore[arg-type]  # deliberately bad input


def test_backoff_grows_jittered_and_capped() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=3.0, jitter=0.5)
    rng = random.Random(7)
    for retry, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        delays = [backoff.delay(retry, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays) and len(set(delays)) > 1
    assert Backoff(jitter=0.0).delay(2) == 1.0
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)


def test_lifecycle_transitions() -> None:
    s = ConnectionState
    reachable = {s.IDLE}
    frontier = [s.IDLE]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(s) and TRANSITIONS[s.CLOSED] == frozenset()
    assert all(
        s.CLOSED in TRANSITIONS[state] or s.CLOSING in TRANSITIONS[state]
        for state in set(s) - {s.IDLE, s.CLOSED, s.CLOSING}
    )
    assert s.READY not in TRANSITIONS[s.LOST]  # a lost connection is never reused


async def test_connection_is_single_use_and_refuses_writes_when_closed() -> None:
    config = VirtualPrinterConfig(buffer_size=ROOMY)
    async with bench(config) as (_, backend, [printer]):
        conn = PrinterConnection(target(config), backend, pacing=FAST)
        assert conn.state is ConnectionState.IDLE
        async with conn:
            assert conn.state is ConnectionState.READY
            result = await conn.write(b"")
            assert (result.bytes_written, result.chunks, result.barriers) == (0, 0, 0)
        assert conn.state is ConnectionState.CLOSED
        with pytest.raises(RuntimeError, match="closed"):
            await conn.write(b"x")
        with pytest.raises(RuntimeError, match="closed"):
            await conn.__aenter__()
        assert printer.bytes_received == 0
